#!/usr/bin/env python3
"""TLS listener in front of a plaintext Kafka-protocol broker, for tests/security.rs: the tansu
build the tests use accepts --cert/--key but never serves TLS (docs/broker.md), so this process
terminates TLS with a certificate the test made and forwards the bytes unchanged. Prints
"listening <port>" once it accepts connections; stops on SIGTERM or when stdin closes."""
import argparse, asyncio, ssl, sys


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen-port", type=int, required=True)
    ap.add_argument("--upstream-port", type=int, required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    a = ap.parse_args()

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)

    async def handle(client_r, client_w):
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", a.upstream_port)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(pipe(client_r, up_w), pipe(up_r, client_w))

    server = await asyncio.start_server(handle, "127.0.0.1", a.listen_port, ssl=ctx)
    print(f"listening {a.listen_port}", flush=True)
    # The test holds our stdin: when it goes away (test ended or crashed), so do we.
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


if __name__ == "__main__":
    asyncio.run(main())
