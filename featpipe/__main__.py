"""``python -m featpipe``: the command line (as the ``featpipe`` console script)."""

from featpipe.cli.main import entry

if __name__ == "__main__":
    entry()
