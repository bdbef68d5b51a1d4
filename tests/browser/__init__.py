"""Browser tests: a package, so that their `package`-scoped fixtures (a Prefect server, the
demo run, Chromium) end with the last test here rather than with the whole session."""
