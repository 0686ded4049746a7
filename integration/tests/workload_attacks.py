"""The attacker of workload_attacks.rs: a process that connects to the
agent's Workload API socket and then hands the connection to a Workload API
client (spiffe-client, with the connection as its standard input and
SPIFFE_CLIENT_STDIN=1) after doing what the attack needs.

usage: workload_attacks.py SOCKET CLIENT MODE [NETNS]

  stay        run CLIENT over the connection, in this process (exec).
  move NETNS  move this process to the network namespace file NETNS
              (setns), then run CLIENT in it (exec: the same process).
  fork        fork a child C that holds the connection; print
              "ready PID CPID" (PID: this process, the one that
              connected), then live on (until killed, at most 120 s) with
              nothing of the test's open. C waits for a line "go" on
              standard input (quits at end of input) and then runs CLIENT
              over the connection: CLIENT's output is C's.
  fork-early  fork without waiting for the agent (below): for an agent
              that has not accepted the connection yet.

Every mode but fork-early first waits (at most 10 s) for the agent to greet
the connection (its HTTP/2 settings, peeked at, not read): the agent speaks
only once it has attested the peer at connect, so that is done while this
process is where it connected from. Failures exit 3.
"""

import ctypes
import os
import select
import socket
import sys
import time

CLONE_NEWNET = 0x40000000


def fail(why):
    print(f"attacker: {why}", file=sys.stderr, flush=True)
    sys.exit(3)


def await_greeting(sock):
    readable, _, _ = select.select([sock], [], [], 10)
    if not readable:
        fail("the agent did not greet the connection within 10 s")
    if not sock.recv(1, socket.MSG_PEEK):
        fail("the agent closed the connection at connect")


def run_client(sock, client):
    os.dup2(sock.fileno(), 0)
    env = dict(os.environ, SPIFFE_CLIENT_STDIN="1")
    os.execve(client, [client], env)


def move_to(path):
    # Python 3.11 has no os.setns.
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        fail(f"setns {path}: {os.strerror(ctypes.get_errno())}")
    os.close(fd)


def main():
    if len(sys.argv) < 4:
        fail(__doc__)
    path, client, mode, *rest = sys.argv[1:]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    if mode != "fork-early":
        await_greeting(sock)
    if mode == "stay":
        run_client(sock, client)
    elif mode == "move" and len(rest) == 1:
        move_to(rest[0])
        run_client(sock, client)
    elif mode in ("fork", "fork-early"):
        child = os.fork()
        if child == 0:
            if sys.stdin.readline().strip() != "go":
                os._exit(0)
            run_client(sock, client)
        print(f"ready {os.getpid()} {child}", flush=True)
        # The test's pipes are C's alone from here: their end is C's end.
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        time.sleep(120)
        os._exit(0)
    else:
        fail(__doc__)


main()
