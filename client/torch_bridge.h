// torch_bridge.h — forwarder: the wire <-> LibTorch bridge moved to common/lora/tensor_bridge.h so
// the coordinator's strategies can use it too. Kept so client code keeps its fedlora::client
// spelling; new code should include common/lora/tensor_bridge.h directly.
#pragma once

#include "common/lora/tensor_bridge.h"

namespace fedlora::client {

using lora::FromWire;
using lora::FromWireAs;
using lora::FromWireAsFloat;
using lora::ToWire;

}  // namespace fedlora::client
