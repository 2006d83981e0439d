@0xe4a8f145989c5dcd;
# A schema in another package, imported by absolute path from ../shapes.capnp.

$import "/capnp/c++.capnp".namespace("tools_test::units");

struct Length {
  millimetres @0 :Int64;
}
