"""``python -m hessian_lab.cli``: the same as the ``hessian-lab`` console script."""

from hessian_lab.cli.app import main

if __name__ == "__main__":
    main()
