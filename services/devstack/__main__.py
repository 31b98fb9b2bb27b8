"""`python -m services.devstack` (what `make run` calls): see services/devstack/supervisor.py."""

from services.devstack.supervisor import main

if __name__ == "__main__":
    raise SystemExit(main())
