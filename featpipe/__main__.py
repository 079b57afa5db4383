from featpipe.cli import entry

entry()
