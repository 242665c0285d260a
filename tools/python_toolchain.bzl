"""A Python toolchain that runs every target on the repository's virtualenv.

rules_python cannot be fetched offline, and Bazel 4's native py_* rules need a toolchain to
find an interpreter. This repository rule points one at `.venv/bin/python3`, which
./bazelw creates from third_party/python/requirements.txt.
"""

_BUILD = """
load("@bazel_tools//tools/python:toolchain.bzl", "py_runtime_pair")

py_runtime(
    name = "python3",
    interpreter_path = "{python}",
    python_version = "PY3",
    stub_shebang = "#!{python}",
)

py_runtime_pair(
    name = "runtime_pair",
    py3_runtime = ":python3",
)

toolchain(
    name = "toolchain",
    toolchain = ":runtime_pair",
    toolchain_type = "@bazel_tools//tools/python:toolchain_type",
    visibility = ["//visibility:public"],
)
"""

def _venv_python_toolchain_impl(rctx):
    workspace = rctx.path(Label("//:WORKSPACE.bazel")).dirname
    python = workspace.get_child(".venv").get_child("bin").get_child("python3")
    if not python.exists:
        fail("No virtualenv at %s. Run Bazel through ./bazelw, which creates it." % python)
    rctx.file("BUILD.bazel", _BUILD.format(python = str(python)))

venv_python_toolchain = repository_rule(
    implementation = _venv_python_toolchain_impl,
    local = True,
    # ./bazelw exports the virtualenv's hash, so a rebuilt venv re-runs this rule.
    environ = ["MAX_VENV_HASH"],
)
