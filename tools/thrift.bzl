"""Apache Thrift C++ code generation for Bazel 4.2.3, offline (Debian's thrift 0.17).

    load("//tools:thrift.bzl", "thrift_cc_library")

    thrift_cc_library(
        name = "replication_thrift",
        src = "replication.thrift",
        services = ["ReplicationTarget"],
    )

C++ code depends on ":replication_thrift" and includes, from the workspace root,
`"libscribe/replication/replication_types.h"`, `".../replication_constants.h"` and
`".../ReplicationTarget.h"` (client + processor + handler interface, no skeleton).

What thrift 0.17's C++ generator writes for `<base>.thrift` (checked):
  * `<base>_types.h/.cpp` always;
  * `<base>_constants.h/.cpp` only if the IDL declares a `const`; when it does not,
    the macro writes empty placeholders so the outputs are the same for every IDL;
  * `<Service>.h/.cpp` for each service. `services` must list exactly the services of
    the IDL: the genrule fails, naming the file, if thrift writes anything else.
Generated files include each other by bare name ("<base>_types.h"); they all sit in one
directory, so that resolves. `include "other.thrift"` is not supported.
"""

load("@rules_cc//cc:defs.bzl", "cc_library")

def thrift_cc_library(name, src, services = [], deps = [], visibility = None, **kwargs):
    """Generates C++ for one .thrift file of this package and wraps it in a cc_library.

    Args:
      name: the cc_library to depend on.
      src: the .thrift file, in this package.
      services: names of the services `src` declares, in any order.
      deps: extra cc deps of the generated code (rarely needed).
      visibility: of the cc_library.
      **kwargs: passed to the cc_library (e.g. testonly, tags).
    """
    if not src.endswith(".thrift"):
        fail("thrift_cc_library %s: src %s is not a .thrift file" % (name, src))
    if "/" in src:
        fail("thrift_cc_library %s: src must be in the package directory itself" % name)
    base = src[:-len(".thrift")]

    hdrs = [base + "_types.h", base + "_constants.h"] + [s + ".h" for s in services]
    cpps = [base + "_types.cpp", base + "_constants.cpp"] + [s + ".cpp" for s in services]
    outs = hdrs + cpps

    # thrift writes into a scratch directory; we then check that it wrote exactly the
    # declared files (constants aside) and copy them out.
    cmd = """
set -euo pipefail
tmp=$$(mktemp -d)
trap 'rm -rf "$$tmp"' EXIT
/usr/bin/thrift --gen cpp:no_skeleton -out "$$tmp" $(execpath {src})
for f in {base}_constants.h {base}_constants.cpp; do
  if [ ! -e "$$tmp/$$f" ]; then
    echo "// {src} declares no constants; thrift generated nothing for this file." > "$$tmp/$$f"
  fi
done
expected=" {outs} "
for f in $$(cd "$$tmp" && ls); do
  case "$$expected" in
    *" $$f "*) ;;
    *) echo "thrift_cc_library {name}: thrift generated unexpected $$f;" \
            "does services= list every service of {src}?" >&2; exit 1 ;;
  esac
done
for f in {outs}; do
  if [ ! -e "$$tmp/$$f" ]; then
    echo "thrift_cc_library {name}: thrift did not generate $$f;" \
         "is every name in services= a service of {src}?" >&2
    exit 1
  fi
  cp "$$tmp/$$f" "$(RULEDIR)/$$f"
done
""".format(src = src, base = base, name = name, outs = " ".join(outs))

    native.genrule(
        name = name + "_gen",
        srcs = [src],
        outs = outs,
        cmd = cmd,
        message = "thrift --gen cpp %s" % src,
        visibility = ["//visibility:private"],
        testonly = kwargs.get("testonly", False),
    )

    cc_library(
        name = name,
        srcs = cpps,
        hdrs = hdrs,
        deps = deps + ["@system//:thrift"],
        visibility = visibility,
        **kwargs
    )
