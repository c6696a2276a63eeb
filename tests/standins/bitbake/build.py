#!/usr/bin/env python3
"""What `bitbake TARGET...` does, from BitBake's own `bb` package (the
bitbake-setup wheel on PyPI carries it, without the `bitbake` and
`bitbake-worker` scripts, the hash equivalence and PR servers):

- the configuration is parsed by bb.cookerdata.CookerDataBuilder, as the
  cooker parses it: conf/bblayers.conf from the build directory, each
  layer's conf/layer.conf, conf/bitbake.conf (which includes
  conf/local.conf), then base and every class in INHERIT
  (CookerDataBuilder.parseConfigurationFiles);
- every recipe in BBFILES is parsed with that configuration
  (CookerDataBuilder.parseRecipe), as the cooker parses them all before it
  builds anything, so a recipe that fails to parse fails the run;
- each target's do_build and the tasks it needs within its recipe run in
  dependency order, each in a forked child with a freshly parsed datastore
  and bb.build.exec_task, as bitbake-worker's fork_off_task runs them;
  noexec tasks are not run, as the runqueue skips them.

What it leaves out: dependencies between recipes (the targets are built
one after another, in the order given), sstate, setscene and signatures.

usage: build.py BUILDDIR TARGET...
Prints each task's log and a `NOTE: PN:TASK Succeeded` (or `Failed`) line
on stdout, and `TASKS PN: do_a do_b ...` with the tasks each target has;
exits 1 when parsing or a task fails.
"""
import glob
import logging
import os
import sys
import types

# bb.cooker and bb.siggen import the hash equivalence client and the PR
# server, which a local build without them never calls and which the wheel
# does not ship.
for name in ("hashserv", "hashserv.client", "prserv", "prserv.serv"):
    module = types.ModuleType(name)
    module.__path__ = []
    sys.modules[name] = module
sys.modules["hashserv"].client = sys.modules["hashserv.client"]
sys.modules["prserv"].serv = sys.modules["prserv.serv"]

import bb  # noqa: E402
import bb.build  # noqa: E402
import bb.cookerdata  # noqa: E402
import bb.data  # noqa: E402
import bb.utils  # noqa: E402

logging.basicConfig(stream=sys.stdout, format="%(levelname)s: %(message)s")

builddir, targets = sys.argv[1], sys.argv[2:]
os.chdir(builddir)
try:
    builder = bb.cookerdata.CookerDataBuilder(bb.cookerdata.CookerConfiguration())
    builder.parseBaseConfiguration()
    recipes = {}
    for pattern in (builder.data.getVar("BBFILES") or "").split():
        for fn in sorted(glob.glob(pattern)):
            d = builder.parseRecipe(fn, [], "")
            recipes[d.getVar("PN")] = (fn, d)
except bb.BBHandledException:
    print("ERROR: parsing failed")
    sys.exit(1)


def tasks_for(d, goal):
    """The tasks `goal` needs, in an order that runs each after its deps."""
    tasks = d.getVar("__BBTASKS", False) or []
    seen, ordered = set(), []

    def visit(task):
        if task in seen:
            return
        seen.add(task)
        for dep in d.getVarFlag(task, "deps", False) or []:
            if dep in tasks:
                visit(dep)
        ordered.append(task)

    visit(goal)
    return ordered


def run_task(fn, task):
    """One task in a child process, as bitbake-worker's fork_off_task."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.setsid()
        os.dup2(os.open(os.devnull, os.O_RDWR), sys.stdin.fileno())
        try:
            data = builder.parseRecipe(fn, [], "")
            data.setVar("BB_WORKERCONTEXT", "1")
            bb.parse.siggen.setup_datacache_from_datastore(fn, data)
            exports = list(bb.data.exported_vars(data))
            bb.utils.empty_environment()
            for name, value in exports:
                os.environ[name] = value
            ret = bb.build.exec_task(fn, task, data)
        except BaseException as e:
            print("ERROR: %s: %r" % (task, e))
            ret = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(ret)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


for target in targets:
    if target not in recipes:
        print("ERROR: Nothing PROVIDES '%s'" % target)
        sys.exit(1)
    fn, d = recipes[target]
    print("TASKS %s: %s" % (target, " ".join(sorted(d.getVar("__BBTASKS", False) or []))))
    for task in tasks_for(d, "do_build"):
        if d.getVarFlag(task, "noexec", False):
            continue
        ret = run_task(fn, task)
        for log in sorted(glob.glob(os.path.join(d.getVar("T"), "log.%s.*" % task))):
            with open(log) as f:
                sys.stdout.write(f.read())
        if ret != 0:
            print("NOTE: %s:%s Failed (exit code %d)" % (target, task, ret))
            sys.exit(1)
        print("NOTE: %s:%s Succeeded" % (target, task))
