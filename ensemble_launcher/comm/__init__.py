"""Transports between a master and its children, behind one message protocol."""

from ensemble_launcher.comm.messages import (
    Bye,
    Define,
    Drain,
    Failed,
    Halt,
    Heartbeat,
    Hello,
    Message,
    NodeLost,
    ProtocolError,
    Request,
    Results,
    Stop,
    Tasks,
    decode,
)
from ensemble_launcher.comm.pipe_transport import PipeChildEndpoint, PipeParentEndpoint
from ensemble_launcher.comm.zmq_transport import ChildEndpoint, CurveKeys, ParentEndpoint

__all__ = [
    "Bye", "ChildEndpoint", "CurveKeys", "Define", "Drain", "Failed", "Halt", "Heartbeat",
    "Hello", "Message", "NodeLost", "ParentEndpoint", "PipeChildEndpoint",
    "PipeParentEndpoint", "ProtocolError", "Request", "Results", "Stop", "Tasks", "decode",
]
