"""The hessian-lab command-line interface."""
