"""Provides the ``dispatch-lab`` command: the dashboard, and the worker and publisher programs."""

from __future__ import annotations

import sys

USAGE = """usage: dispatch-lab [dashboard options]       open the dashboard
       dispatch-lab worker [options]             the tutorial's worker.py
       dispatch-lab new-task [options] WORDS     the tutorial's new_task.py
       dispatch-lab broker                       a private RabbitMQ node until Ctrl+C
       dispatch-lab compare [options]            one scenario under each prefetch, side by side
       dispatch-lab replay FILE                  reopen a saved session read-only
       dispatch-lab serve [--host H] [--port P]  the dashboard in browsers, watch-only tabs
       dispatch-lab bench [--quick]              the benchmarks (from a source checkout)

Run any of them with --help for its options."""


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command = args[0] if args and not args[0].startswith("-") else None
    if command == "worker":
        from workers.worker import main as worker_main

        return worker_main(args[1:], prog="dispatch-lab worker")
    if command == "new-task":
        from workers.new_task import main as new_task_main

        return new_task_main(args[1:], prog="dispatch-lab new-task")
    if command == "broker":
        from workers.local_node import main as broker_main

        return broker_main(args[1:], prog="dispatch-lab broker")
    if command == "compare":
        from tui.teaching.compare import main as compare_main

        return compare_main(args[1:])
    if command == "serve":
        from tui.serve import main as serve_main

        return serve_main(args[1:])
    if command == "replay":
        from tui.launch import replay_main

        return replay_main(args[1:])
    if command == "bench":
        import subprocess
        from pathlib import Path

        # The benchmarks sit beside tui/ in a source checkout and import the app: a script of their
        # own, run as one, so that nothing in tui/ imports them (one-way dependencies, no path edits).
        script = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"
        if not script.is_file():
            print("dispatch-lab: the benchmarks live in the source checkout: run `make bench` there", file=sys.stderr)
            return 2
        try:
            return subprocess.run([sys.executable, str(script), *args[1:]], check=False).returncode
        except KeyboardInterrupt:
            return 130
    if command in ("help",):
        print(USAGE)
        return 0
    if command is not None:
        print(f"dispatch-lab: unknown command {command!r}\n{USAGE}", file=sys.stderr)
        return 2
    from tui.launch import main as dashboard_main

    return dashboard_main(args)


if __name__ == "__main__":
    sys.exit(main())
