"""tests/with_minerl runs in the MineRL venv (.venv-minerl, `make test`), never in the main one. (Not named
tests/minerl: with tests/ on sys.path, a folder of that name would shadow `import minerl`.)

MineRL 0.4.4 needs numpy<1.24 and gym 0.19, which cannot live beside the main pins, so the main venv does not
collect this folder. In the MineRL venv nothing is ignored: if minerl were broken there, pytest would collect
no test and exit with status 5, failing `make test` loudly rather than skipping.
"""
import importlib.util

_spec = importlib.util.find_spec("minerl")
collect_ignore_glob = [] if _spec is not None and _spec.origin else ["*.py"]  # origin None: not the real package
