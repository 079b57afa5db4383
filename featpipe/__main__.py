from featpipe.cli.main import entry

entry()
