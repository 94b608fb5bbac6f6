"""The isolated side after unpack: does this host fit (hostcheck, hostprobe), the local runner
(local), and the Docker path (engine, dockerfile, docker)."""
