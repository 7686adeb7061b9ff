"""`python -m shunter`: the same as the `shunter` command."""

from shunter.cli import main

raise SystemExit(main())
