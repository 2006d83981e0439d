@0x8e9792731e893ff3;
# The backplane between scribed nodes of one cluster. Node-to-node engine traffic is a
# stream of opaque, self-describing engine messages (the engine owns their format and
# builds request/response with timeouts on top), carried one-way so that the transport
# behaves like the simulated network the engine is tested against.

$import "/capnp/c++.capnp".namespace("scribe::backplane");

interface Backplane {
  # Delivers one engine message from node `from`. Returns once the receiver has taken it.
  deliver @0 (from :UInt32, payload :Data) -> ();
}
