"""`python -P reconciler/gateway/__main__.py --port N --routes FILE`, as the reconciler renders engine gateway."""

if not __package__:  # run by path: import the reconciler this file belongs to, not another one installed
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from reconciler.gateway.server import main  # noqa: E402

main()

