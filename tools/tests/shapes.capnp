@0xf92896cbfaa0b98f;
# Imports another package's schema (absolute path) and Cap'n Proto's own.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("tools_test");

using Units = import "/tools/tests/units/units.capnp";

struct Circle {
  radius @0 :Units.Length;
}
