"""Cap'n Proto C++ code generation for Bazel 4.2.3, offline (Debian's capnproto 0.9.2).

    load("//tools:capnp.bzl", "capnp_cc_library")

    capnp_cc_library(
        name = "backplane_capnp",
        srcs = ["backplane.capnp"],
        deps = [],  # other capnp_cc_library targets whose schemas these import
    )

C++ code then depends on ":backplane_capnp" and writes
`#include "libscribe/env/backplane.capnp.h"` (the path of the schema from the
workspace root, plus `.h`).

Imports a schema may use:
  * a sibling in the same target: `using import "other.capnp"` (list both in srcs);
  * a schema of another capnp_cc_library: `import "/libscribe/env/backplane.capnp"`
    (an absolute path from the workspace root) with that target in `deps`; a relative
    import of another target's schema in the same package works too;
  * Cap'n Proto's own: `import "/capnp/c++.capnp"` (from /usr/include).

What the macro hides:
  * capnp writes `<file>.capnp.c++`, an extension Bazel's cc rules do not accept; the
    generated source is renamed `<file>.capnp.cc` (it includes its header by the bare
    name `"<file>.capnp.h"`, which the compiler finds next to it).
  * for absolute imports capnp writes `#include <libscribe/env/backplane.capnp.h>`;
    Bazel only puts the output tree on the quote-include path (-iquote), so those
    lines are rewritten to `#include "..."` (quote includes still fall back to the
    system path, so `<capnp/...>` headers keep working).
"""

load("@rules_cc//cc:defs.bzl", "cc_library")

_SCHEMAS_SUFFIX = "_capnp_schemas"

def _schemas_label(dep):
    """The schema filegroup a capnp_cc_library `dep` declares next to itself."""
    if ":" in dep:
        return dep + _SCHEMAS_SUFFIX
    if dep.startswith("//") or dep.startswith("@"):
        # "//a/b" is short for "//a/b:b".
        return "%s:%s%s" % (dep, dep.split("/")[-1], _SCHEMAS_SUFFIX)
    return ":" + dep + _SCHEMAS_SUFFIX

def capnp_cc_library(name, srcs, deps = [], visibility = None, **kwargs):
    """Generates C++ for `srcs` (.capnp files of this package) and wraps it in a cc_library.

    Args:
      name: the cc_library to depend on.
      srcs: .capnp files in this package (subdirectories allowed).
      deps: other capnp_cc_library targets whose schemas `srcs` import.
      visibility: of the cc_library and of the schema filegroup.
      **kwargs: passed to the cc_library (e.g. testonly, tags).
    """
    for src in srcs:
        if not src.endswith(".capnp"):
            fail("capnp_cc_library %s: %s is not a .capnp file" % (name, src))
    if not srcs:
        fail("capnp_cc_library %s: srcs is empty" % name)

    package = native.package_name()
    src_prefix = package if package else "."

    # Every schema a compile of `srcs` may open: ours and, transitively, our deps'.
    native.filegroup(
        name = name + _SCHEMAS_SUFFIX,
        srcs = srcs + [_schemas_label(d) for d in deps],
        visibility = visibility,
        testonly = kwargs.get("testonly", False),
    )

    hdrs = [s + ".h" for s in srcs]
    ccs = [s + ".cc" for s in srcs]
    cmd = " && ".join([
        # -I. makes "/<workspace path>.capnp" imports resolve; -I/usr/include the
        # standard "/capnp/*.capnp" ones. Absolute paths keep the action independent
        # of the user's PATH.
        "/usr/bin/capnp compile -I. -I/usr/include --src-prefix=%s -o/usr/bin/capnpc-c++:$(RULEDIR) %s" % (
            src_prefix,
            " ".join(["$(execpath %s)" % s for s in srcs]),
        ),
    ] + [
        "mv $(RULEDIR)/{s}.c++ $(RULEDIR)/{s}.cc".format(s = s)
        for s in srcs
    ] + [
        "sed -i -E 's|^#include <(.+[.]capnp[.]h)>$$|#include \"\\1\"|' $(RULEDIR)/%s" % h
        for h in hdrs
    ])

    native.genrule(
        name = name + "_gen",
        srcs = srcs + [_schemas_label(d) for d in deps],
        outs = hdrs + ccs,
        cmd = cmd,
        message = "capnp compile %s" % " ".join(srcs),
        visibility = ["//visibility:private"],
        testonly = kwargs.get("testonly", False),
    )

    cc_library(
        name = name,
        srcs = ccs,
        hdrs = hdrs,
        deps = deps + ["@system//:capnp"],
        visibility = visibility,
        **kwargs
    )
