"""`python -m lohp.cli` is the `lohp` command."""

from lohp.cli import main

if __name__ == "__main__":
    main()
