"""Transports between a master and its children, behind one message protocol."""

from ensemble_launcher.comm.endpoints import ChildSide, ParentSide
from ensemble_launcher.comm.messages import (
    Bye,
    Cancel,
    Define,
    Drain,
    Failed,
    Halt,
    Heartbeat,
    Held,
    Hello,
    Hold,
    Message,
    NodeLost,
    NodeSamples,
    ProtocolError,
    Release,
    Request,
    ResultBatch,
    RunHeld,
    Stop,
    Tasks,
    decode,
)
from ensemble_launcher.comm.pipe_transport import PipeChildEndpoint, PipeParentEndpoint
from ensemble_launcher.comm.zmq_transport import (
    ANYONE,
    ChildEndpoint,
    CurveKeys,
    ParentEndpoint,
    terminate,
)

__all__ = [
    "ANYONE", "Bye", "Cancel", "ChildEndpoint", "ChildSide", "CurveKeys", "Define", "Drain",
    "Failed", "Halt", "Heartbeat", "Held", "Hello", "Hold", "Message", "NodeLost",
    "NodeSamples", "ParentEndpoint", "ParentSide", "PipeChildEndpoint", "PipeParentEndpoint",
    "ProtocolError", "Release", "Request", "ResultBatch", "RunHeld", "Stop", "Tasks", "decode",
    "terminate",
]
