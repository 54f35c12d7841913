"""hessian-lab: curvature of loss landscapes while networks train."""

__version__ = "0.1.0"
