from portaft.cli import entry

entry()
