@0xe0147222912549a3;
# Imports a sibling schema of the same capnp_cc_library (relative path).

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("tools_test");

using import "shapes.capnp".Circle;

struct Drawing {
  title @0 :Text;
  circles @1 :List(Circle);
}
