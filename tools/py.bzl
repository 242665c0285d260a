"""Project macros for Python targets, in the spirit of MAX's modular_py_* macros.

They keep BUILD files short: every target depends on the root library (which puts
max/python on sys.path), tests run under pytest with sensible size and tag defaults, and
tests that need a GPU carry the `gpu` tag (they skip themselves when no GPU is present).
"""

_ROOT = "//max/python/max"

def _with_root(deps, name):
    deps = list(deps or [])
    if native.package_name() == "max/python/max" and name == "max":
        return deps
    if _ROOT not in deps and ":max" not in deps:
        deps.append(_ROOT)
    return deps

def modular_py_library(name, srcs = None, deps = None, data = None, imports = None, **kwargs):
    """A py_library that sees the `max` package and whatever it depends on."""
    native.py_library(
        name = name,
        srcs = srcs if srcs != None else native.glob(["*.py"], exclude = ["*_test.py"]),
        deps = _with_root(deps, name),
        data = data or [],
        imports = imports or [],
        **kwargs
    )

def modular_py_binary(name, srcs, main = None, deps = None, data = None, **kwargs):
    """A py_binary on the virtualenv's interpreter with the `max` package importable."""
    native.py_binary(
        name = name,
        srcs = srcs,
        main = main or srcs[0],
        deps = _with_root(deps, name),
        data = data or [],
        python_version = "PY3",
        **kwargs
    )

def modular_py_test(name, srcs, deps = None, data = None, size = "small", tags = None, gpu = False, args = None, **kwargs):
    """A pytest-driven py_test.

    Args:
      name: target name.
      srcs: test files; each is collected by pytest.
      deps: libraries under test.
      data: runtime files.
      size: Bazel test size; "small" unless the test is slow.
      tags: extra tags.
      gpu: the test needs a GPU; it is tagged `gpu` and must skip itself without one.
      args: extra pytest arguments.
      **kwargs: passed to py_test.
    """
    tags = list(tags or [])
    if gpu and "gpu" not in tags:
        tags.append("gpu")
    native.py_test(
        name = name,
        srcs = srcs + ["//tools:pytest_main.py"],
        main = "//tools:pytest_main.py",
        deps = _with_root(deps, name),
        data = data or [],
        size = size,
        tags = tags,
        args = [native.package_name() + "/" + s for s in srcs] + (args or []),
        python_version = "PY3",
        **kwargs
    )
