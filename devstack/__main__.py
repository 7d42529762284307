import argparse
import sys
import time

from devstack.stack import Stack, StackError


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "env"])
    args = parser.parse_args()
    stack = Stack()
    try:
        if args.command == "up":
            started = time.monotonic()
            already = stack.is_up()
            stack.up()
            verb = "already running" if already else f"started in {time.monotonic() - started:.1f}s"
            print(f"stack {verb}; load it with: . {stack.env_file}")
        elif args.command == "down":
            stack.down()
            print("stack stopped")
        elif args.command == "status":
            for name, alive in stack.process_status().items():
                print(f"{name:34} {'running' if alive else 'stopped'}")
            return 0 if stack.is_up() else 1
        elif args.command == "env":
            print(stack.env_file.read_text(), end="")
    except StackError as exc:
        print(f"devstack: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
