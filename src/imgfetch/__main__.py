from imgfetch.cli import entry

entry()
