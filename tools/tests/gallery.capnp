@0xcfe7db09b1cded58;
# Imports a schema of another capnp_cc_library in the same package (relative path).

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("tools_test");

using import "drawing.capnp".Drawing;

struct Gallery {
  drawings @0 :List(Drawing);
}
