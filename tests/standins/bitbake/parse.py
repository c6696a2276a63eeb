#!/usr/bin/env python3
"""Parses a recipe that inherits recipes/yocto/imprint.bbclass with
BitBake's own parser (the `bb` package; the bitbake-setup wheel on PyPI
carries it) and prints what BitBake would run, as JSON: the task graph
entry and flags of do_imprint, and the shell script BitBake would write to
temp/run.do_imprint for each shell function (with its variables expanded,
as bb.build does), for tests/it/recipes.rs to check and run.

usage: parse.py LAYER RECIPE [run]
LAYER has conf/bitbake.conf and classes/; RECIPE is a .bb file in it.
With `run`, do_imprint is also run as bb.build runs a task (its run.*
scripts written to ${T}), and its log printed.
"""
import io
import json
import sys
import types

# bb.siggen imports BitBake's hash equivalence client, which parsing never
# calls and which the wheel does not ship.
for name in ("hashserv", "hashserv.client"):
    module = types.ModuleType(name)
    module.__path__ = []
    sys.modules[name] = module
sys.modules["hashserv"].client = sys.modules["hashserv.client"]

import bb  # noqa: E402
import bb.data  # noqa: E402
import bb.parse  # noqa: E402
import bb.build  # noqa: E402
import bb.utils  # noqa: E402

layer, recipe = sys.argv[1], sys.argv[2]
d = bb.data.init()
d.setVar("BBPATH", layer)
d.setVar("TOPDIR", layer)
d = bb.parse.handle(layer + "/conf/bitbake.conf", d, include=False)
bb.parse.handle(layer + "/classes/base.bbclass", d, include=True)
bb.parse.init_parser(d)
d.setVar("__bbclasstype", "recipe")
envs = bb.parse.handle(recipe, d)
d = envs[""]
bb.data.expandKeys(d)


def emit(func):
    """The script bb.build.exec_func_shell writes for `func`."""
    out = io.StringIO()
    bb.data.emit_func(func, out, d)
    return out.getvalue()


if sys.argv[3:] == ["run"]:
    import os
    bb.utils.mkdirhier(d.getVar("T"))
    try:
        bb.build.exec_func("do_imprint", d)
    finally:
        for name in sorted(os.listdir(d.getVar("T"))):
            if name.startswith("log."):
                with open(os.path.join(d.getVar("T"), name)) as f:
                    sys.stdout.write(f.read())
    sys.exit(0)

print(
    json.dumps(
        {
            "tasks": d.getVar("__BBTASKS", False),
            "imprint_deps": d.getVarFlag("do_imprint", "deps", False),
            "build_deps": d.getVarFlag("do_build", "deps", False),
            "network": d.getVarFlag("do_imprint", "network"),
            "file_checksums": d.getVarFlag("do_imprint", "file-checksums"),
            "vardeps": d.getVarFlag("do_imprint", "vardeps"),
            "python": bool(d.getVarFlag("do_imprint", "python")),
            "image_types": d.getVar("IMPRINT_IMAGE_TYPES"),
            "tegraflash_pkg": d.getVar("IMPRINT_TEGRAFLASH_PKG"),
            "outdir": d.getVar("IMPRINT_OUTDIR"),
            "exported": [k for k in d.keys() if d.getVarFlag(k, "export")],
            "imprint_images": emit("imprint_images"),
        },
        indent=1,
    )
)
