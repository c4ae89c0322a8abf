"""Print a pip constraints file pinning every runtime dependency of pyproject.toml to its declared minimum
(``name>=X`` becomes ``name==X``), for the CI session that tests the oldest versions we claim to support.

Usage: python .ci/min_constraints.py [pyproject.toml] [--skip NAME ...] > constraints.txt
"""
import re
import sys

try:
    import tomllib
except ImportError:  # Python < 3.11: pip vendors a TOML reader
    from pip._vendor import tomli as tomllib


def main(argv):
    skip = set()
    if "--skip" in argv:
        at = argv.index("--skip")
        skip = {name.lower() for name in argv[at + 1:]}
        argv = argv[:at]
    path = argv[0] if argv else "pyproject.toml"
    with open(path, "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    for dep in deps:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*>=\s*([^,;\s]+)\s*", dep)
        if m is None:
            raise SystemExit(f"error: dependency {dep!r} has no plain '>=' minimum to pin")
        if m.group(1).lower() not in skip:
            print(f"{m.group(1)}=={m.group(3)}")


if __name__ == "__main__":
    main(sys.argv[1:])
