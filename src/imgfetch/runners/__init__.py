"""Who does the rows: the in-process :class:`~imgfetch.runners.local.Fetcher` and the
``--loops`` processes of :mod:`imgfetch.runners.loops`, both behind :class:`Runner`."""
