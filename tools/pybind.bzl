"""pybind11 extension modules and pytest suites for Bazel 4.2.3, offline.

    load("//tools:pybind.bzl", "pybind_extension", "py_pytest")

    pybind_extension(
        name = "scribe",             # builds :scribe.so, `import scribe`
        srcs = ["scribe_py.cc"],
        deps = ["//libscribe:scribe"],
    )

    py_pytest(
        name = "scribe_py_test",
        srcs = ["scribe_test.py"],
        ext = [":scribe.so"],
    )

Python is Debian's /usr/bin/python3 (3.11), the only interpreter with pytest and
pybind11 on these machines; the module name in PYBIND11_MODULE(...) must equal `name`.
"""

load("@rules_cc//cc:defs.bzl", "cc_binary")

_PYTHON_INCLUDE = "/usr/include/python3.11"

def pybind_extension(name, srcs, deps = [], copts = [], visibility = None, **kwargs):
    """Builds the Python extension module `<name>.so` (target `:<name>.so`).

    Args:
      name: the Python module name; the target and file are `<name>.so`.
      srcs: C++ sources (one of them holds PYBIND11_MODULE(<name>, m)).
      deps: cc deps.
      copts: extra compiler options.
      visibility: of the `.so` target.
      **kwargs: passed to the cc_binary (e.g. testonly, tags).
    """
    if name.endswith(".so"):
        fail("pybind_extension %s: name is the module name, without .so" % name)
    cc_binary(
        name = name + ".so",
        srcs = srcs,
        deps = deps,
        linkshared = 1,
        # Hidden visibility is what pybind11 expects (PyInit_<name> stays exported);
        # it keeps modules built against different pybind11 internals apart.
        copts = ["-I" + _PYTHON_INCLUDE, "-fvisibility=hidden"] + copts,
        visibility = visibility,
        **kwargs
    )

def py_pytest(name, srcs, ext = [], data = [], args = [], **kwargs):
    """A test that runs `/usr/bin/python3 -m pytest -q <srcs>` from the runfiles.

    Each extension in `ext` is importable by its module name: the directory holding it
    is put on PYTHONPATH. Per-case results go to Bazel's test.xml.

    Args:
      name: the test target.
      srcs: pytest files (test_*.py or *_test.py) in this package.
      ext: labels of pybind_extension `.so` targets the tests import.
      data: other runtime files.
      args: extra pytest arguments.
      **kwargs: passed to the sh_test (size, tags, timeout...).
    """
    ext_args = []
    for e in ext:
        ext_args += ["--ext", "$(rootpath %s)" % e]
    native.sh_test(
        name = name,
        srcs = ["//tools:pytest_runner.sh"],
        data = srcs + ext + data,
        args = ext_args + ["--"] + ["$(rootpath %s)" % s for s in srcs] + args,
        **kwargs
    )
