"""The TensorBoard event-file writer, checked against TensorBoard's own code."""

from __future__ import annotations

import random
import struct
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as reference_crc

from lrpilot.train._tbevents import EventFileWriter, encode_record, masked_crc32c


def test_masked_crc_matches_tensorboards_pure_python_one() -> None:
    rng = random.Random(0)
    for n in (0, 1, 7, 8, 9, 63, 64, 200, 1000):
        data = bytes(rng.getrandbits(8) for _ in range(n))
        assert masked_crc32c(data) == reference_crc(data)


def test_records_are_framed_as_tfrecords(tmp_path: Path) -> None:
    writer = EventFileWriter(tmp_path)
    writer.add_scalars(3, [("a", 1.5), ("b", -2.0)])
    writer.close()
    raw = writer.path.read_bytes()
    events = []
    while raw:
        (length,) = struct.unpack("<Q", raw[:8])
        assert struct.unpack("<I", raw[8:12])[0] == reference_crc(raw[:8])
        data = raw[12 : 12 + length]
        assert struct.unpack("<I", raw[12 + length : 16 + length])[0] == reference_crc(data)
        assert encode_record(data) == raw[: 16 + length]
        events.append(Event.FromString(data))
        raw = raw[16 + length :]
    assert events[0].file_version == "brain.Event:2"
    assert events[1].step == 3
    assert [(v.tag, v.simple_value) for v in events[1].summary.value] == [("a", 1.5), ("b", -2.0)]


def _scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_resume_purges_the_steps_past_the_checkpoint(tmp_path: Path) -> None:
    first = EventFileWriter(tmp_path)
    for step in range(1, 11):  # the killed run got to step 10
        first.add_scalars(step, [("loss", float(step))])
    first.close()
    # files are read in name order: make the first run's file the older one
    first.path.rename(tmp_path / "events.out.tfevents.0000000001.host.1.0")
    second = EventFileWriter(tmp_path, purge_step=6)  # resumed from the step-5 checkpoint
    for step in range(6, 13):
        second.add_scalars(step, [("loss", 100.0 + step)])
    second.close()
    got = _scalars(tmp_path, "loss")
    assert got == [(s, float(s)) for s in range(1, 6)] + [(s, 100.0 + s) for s in range(6, 13)]
