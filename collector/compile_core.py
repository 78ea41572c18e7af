"""Compile the projection's pure core with mypyc, in place: `make compile` runs it from `collector/`.

The modules are `headway_collector.model.COMPILED_MODULES`, built as one group whose shared library
sits inside the package (`headway_collector/model/_compiled__mypyc...so`), so that it imports from
wherever the package does. Nothing is built when the build is current; a failed build is removed,
and the package then runs the source (it does whenever the build is missing or older than it).
"""

import contextlib
import os
import sys
from pathlib import Path

from headway_collector import model

LOG = Path("build/mypyc.log")


def built() -> list[Path]:
    here = Path(model.__file__).parent
    return [*here.glob("*__mypyc.*.so"), *(p for m in model.COMPILED_MODULES for p in here.glob(f"{m}.*.so"))]


def main() -> int:
    if model.up_to_date():
        print("projection core: compiled with mypyc (up to date)")
        return 0
    from mypyc.build import mypycify
    from setuptools import setup

    print("projection core: compiling with mypyc ...", flush=True)
    # The core imports the SDK's wire vocabularies; its editable install is an import hook, which
    # mypy does not follow: name its source folder.
    sdk = str(Path(__file__).resolve().parent.parent / "sdk")
    os.environ["MYPYPATH"] = os.pathsep.join(p for p in (sdk, os.environ.get("MYPYPATH")) if p)
    LOG.parent.mkdir(exist_ok=True)
    try:
        with LOG.open("w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            setup(
                name="headway-projection-core",
                ext_modules=mypycify(
                    [f"headway_collector/model/{m}.py" for m in model.COMPILED_MODULES],
                    opt_level="3",
                    group_name="headway_collector.model._compiled",
                ),
                script_args=["build_ext", "--inplace"],
            )
    except (Exception, SystemExit) as exc:
        for path in built():
            path.unlink()
        print(f"projection core: mypyc failed ({exc!r}; see collector/{LOG}): it runs interpreted")
        return 0
    for path in built():  # an unchanged build is copied with its old times: mark it as of now
        os.utime(path)
    print("projection core: compiled with mypyc")
    return 0


if __name__ == "__main__":
    sys.exit(main())
