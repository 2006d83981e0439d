// Builds, serializes and reads back a message whose schemas use every import form
// capnp_cc_library supports; compiling this file is most of the test.
#include <capnp/message.h>
#include <capnp/serialize.h>
#include <gtest/gtest.h>

#include "tools/tests/gallery.capnp.h"
#include "tools/tests/units/units.capnp.h"

namespace {

TEST(CapnpMacroTest, RoundTripsAcrossImportedSchemas) {
  capnp::MallocMessageBuilder builder;
  auto gallery = builder.initRoot<tools_test::Gallery>();
  auto drawing = gallery.initDrawings(1)[0];
  drawing.setTitle("wheels");
  auto circles = drawing.initCircles(2);
  circles[0].initRadius().setMillimetres(300);
  circles[1].initRadius().setMillimetres(-7);

  kj::Array<capnp::word> words = capnp::messageToFlatArray(builder);
  capnp::FlatArrayMessageReader reader(words.asPtr());
  auto read = reader.getRoot<tools_test::Gallery>();
  ASSERT_EQ(read.getDrawings().size(), 1u);
  auto read_drawing = read.getDrawings()[0];
  EXPECT_EQ(read_drawing.getTitle(), "wheels");
  ASSERT_EQ(read_drawing.getCircles().size(), 2u);
  EXPECT_EQ(read_drawing.getCircles()[0].getRadius().getMillimetres(), 300);
  EXPECT_EQ(read_drawing.getCircles()[1].getRadius().getMillimetres(), -7);

  tools_test::units::Length::Reader length = read_drawing.getCircles()[0].getRadius();
  EXPECT_EQ(length.getMillimetres(), 300);
}

}  // namespace
