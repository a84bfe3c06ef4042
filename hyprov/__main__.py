from hyprov.cli.main import entry

entry()
