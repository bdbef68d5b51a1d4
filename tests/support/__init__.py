"""Helpers every test kit shares: one home for what used to be copied between them.

Importable as `support` from any test: tests/conftest.py puts tests/ on `sys.path`. The kits
(clikit, flowkit, opskit, browserkit, sandbox_testkit) re-export the names they used to
define, so `from clikit import free_port` still works.
"""
