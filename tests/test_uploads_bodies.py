"""Request bodies the size of a chunk are received in memory, within a budget
(one body per worker thread); the others are spooled to a file as before."""

import socket

import pytest

from support.daemon import auth_headers
from support.uploads import complete, init, random_bytes, send_chunk, sha256
from support.waiting import wait_for

MiB = 1024 * 1024


def kept(daemon):
    counts = {"memory": 0, "file": 0}
    for line in daemon.get("/metrics").text.splitlines():
        for where in counts:
            if line.startswith(f'hpcportal_request_bodies_total{{kept="{where}"}}'):
                counts[where] = int(float(line.split()[-1]))
    return counts


class HeldChunk:
    """A chunk request on a raw connection: headers and all but the last byte
    sent, the rest when ``finish`` is called."""

    def __init__(self, daemon, upload_id, index, body):
        self._body = body
        self._sock = socket.create_connection(("127.0.0.1", daemon.port), timeout=60)
        headers = {**auth_headers("alice"), "Host": f"127.0.0.1:{daemon.port}",
                   "Content-Type": "application/octet-stream", "Content-Length": str(len(body))}
        head = (f"POST /api/v2/files/upload/chunk?upload_id={upload_id}&chunk_index={index} HTTP/1.1\r\n"
                + "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n")
        self._sock.sendall(head.encode() + body[:-1])

    def finish(self):
        self._sock.sendall(self._body[-1:])
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += self._sock.recv(65536)
        self._sock.close()
        return int(answer.split(b" ", 2)[1])

    def drop(self):
        self._sock.close()


def rss(daemon):
    with open(f"/proc/{daemon.proc.pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_a_chunk_is_received_in_memory_and_a_larger_body_is_spooled(daemon_factory):
    daemon = daemon_factory(config={"uploads": {"free_space_reserve": 0}})
    data = random_bytes(5 * MiB + 8 * MiB)
    small = init(daemon, "alice", "small.bin", 5 * MiB).json()
    assert send_chunk(daemon, "alice", small["upload_id"], 0, data[:5 * MiB]).status_code == 200
    assert kept(daemon) == {"memory": 1, "file": 0}
    # A client's own larger chunk size is over the in-memory size: spooled as before.
    large = init(daemon, "alice", "large.bin", 8 * MiB, chunk_size=8 * MiB).json()
    assert send_chunk(daemon, "alice", large["upload_id"], 0, data[5 * MiB:]).status_code == 200
    assert kept(daemon) == {"memory": 1, "file": 1}
    assert complete(daemon, "alice", small["upload_id"]).json()["sha256"] == sha256(data[:5 * MiB])
    assert complete(daemon, "alice", large["upload_id"]).json()["sha256"] == sha256(data[5 * MiB:])


def test_bodies_beyond_the_budget_are_spooled_and_memory_stays_bounded(daemon_factory):
    # Two worker threads: room for two 5 MiB bodies in memory at once.
    # The job monitor's polls parse the whole shared Slurm's queue: their memory would
    # swing the RSS measured here by tens of MiB, so they wait for the hour.
    daemon = daemon_factory(config={"server": {"threads": 2}, "uploads": {"free_space_reserve": 0},
                                    "slurm": {"poll_interval": "1h", "squeue_interval": "1h"}})
    count = 10
    data = random_bytes(count * 5 * MiB)
    info = init(daemon, "alice", "held.bin", len(data)).json()
    assert info["chunk_size"] == 5 * MiB
    before = rss(daemon)
    held = [HeldChunk(daemon, info["upload_id"], index, data[index * 5 * MiB:(index + 1) * 5 * MiB])
            for index in range(count)]
    wait_for(lambda: sum(kept(daemon).values()) == count, timeout=30, interval=0.05,
             message=f"{count} bodies counted", show=lambda: kept(daemon))
    assert kept(daemon) == {"memory": 2, "file": count - 2}
    # Ten bodies of 5 MiB each, all but complete: two are in memory (10 MiB),
    # the others in files; unbounded, the daemon would hold 50 MiB of them.
    assert rss(daemon) - before < 30 * MiB
    assert [chunk.finish() for chunk in held] == [200] * count
    assert complete(daemon, "alice", info["upload_id"]).json()["sha256"] == sha256(data)
    # The budget came back: the next body is kept in memory again.
    again = init(daemon, "alice", "again.bin", 5 * MiB).json()
    assert send_chunk(daemon, "alice", again["upload_id"], 0, data[:5 * MiB]).status_code == 200
    assert kept(daemon)["memory"] == 3


def test_a_connection_dropped_mid_body_gives_its_budget_back(daemon_factory):
    daemon = daemon_factory(config={"server": {"threads": 1}, "uploads": {"free_space_reserve": 0}})
    data = random_bytes(5 * MiB)
    info = init(daemon, "alice", "dropped.bin", 5 * MiB).json()
    dropped = HeldChunk(daemon, info["upload_id"], 0, data)
    wait_for(lambda: kept(daemon) == {"memory": 1, "file": 0}, timeout=30, interval=0.05,
             message="one body kept in memory", show=lambda: kept(daemon))
    dropped.drop()

    def kept_in_memory_again():
        assert send_chunk(daemon, "alice", info["upload_id"], 0, data).status_code == 200
        return kept(daemon)["memory"] == 2

    wait_for(kept_in_memory_again, timeout=30, interval=0.05, message="bodies kept in memory again")
    assert complete(daemon, "alice", info["upload_id"]).json()["sha256"] == sha256(data)


@pytest.mark.parametrize("multipart", [True, False])
def test_a_chunk_in_memory_arrives_whole(daemon_factory, multipart):
    daemon = daemon_factory(config={"uploads": {"free_space_reserve": 0}})
    data = random_bytes(5 * MiB + 123)
    info = init(daemon, "alice", "whole.bin", len(data)).json()
    for index, start in enumerate(range(0, len(data), 5 * MiB)):
        piece = data[start:start + 5 * MiB]
        answer = send_chunk(daemon, "alice", info["upload_id"], index, piece, multipart=multipart,
                            chunk_sha256=sha256(piece))
        assert answer.status_code == 200, answer.text
    assert kept(daemon)["memory"] == 1  # the 123-byte last chunk is waitress' own business
    assert complete(daemon, "alice", info["upload_id"]).json()["sha256"] == sha256(data)
