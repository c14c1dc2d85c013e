# patchflow: every target is one `inv` call (see `make help`). The virtualenv is created on first use.
VENV := .venv
INV := $(VENV)/bin/inv
VERSION ?=
HOST ?=
SERVICE ?=
TAIL ?=
FOLLOW ?=
ROOT ?= .
V := $(if $(VERSION),--version $(VERSION),)

.DEFAULT_GOAL := help
.PHONY: help patch-status create-patch verify-patch apply-patch rollback-patch prune-backups preflight \
        demo demo-compose test logs ps up down restart

$(VENV)/.installed: pyproject.toml scripts/bootstrap.sh
	@scripts/bootstrap.sh

help: $(VENV)/.installed ## list the commands
	@$(INV) --list

patch-status: $(VENV)/.installed ## installed version, patches, backups, history, interrupted applies
	@$(INV) patch-status --root $(ROOT)

create-patch: $(VENV)/.installed ## build patches/vX.Y.Z/ (VERSION=x.y.z, default: the VERSION file)
	@$(INV) create-patch --root $(ROOT) $(V)

verify-patch: $(VENV)/.installed ## check a patch's checksums and manifest (VERSION=x.y.z)
	@$(INV) verify-patch --root $(ROOT) $(V)

apply-patch: $(VENV)/.installed ## apply a patch with backup, health check and automatic rollback (VERSION=x.y.z)
	@$(INV) apply-patch --root $(ROOT) $(V)

rollback-patch: $(VENV)/.installed ## restore code, database and VERSION from before a patch (VERSION=x.y.z)
	@$(INV) rollback-patch --root $(ROOT) $(V)

prune-backups: $(VENV)/.installed ## delete old backups (retention)
	@$(INV) prune-backups --root $(ROOT)

preflight: $(VENV)/.installed ## the project's lint/typecheck/prisma validate and patchflow's own checks
	@$(INV) preflight --root $(ROOT)

logs: $(VENV)/.installed ## service logs (SERVICE=api, TAIL=100, FOLLOW=1)
	@$(INV) logs --root $(ROOT) $(if $(SERVICE),--service $(SERVICE),) $(if $(TAIL),--tail $(TAIL),) $(if $(FOLLOW),--follow,)

ps: $(VENV)/.installed ## service states
	@$(INV) ps --root $(ROOT)

up: $(VENV)/.installed ## start the stack
	@$(INV) up --root $(ROOT)

down: $(VENV)/.installed ## stop the stack (volumes are kept)
	@$(INV) down --root $(ROOT)

restart: $(VENV)/.installed ## restart services (SERVICE=api)
	@$(INV) restart --root $(ROOT) $(if $(SERVICE),--service $(SERVICE),)

demo: $(VENV)/.installed ## run create/apply/status/rollback on the bundled example
	@$(INV) demo

demo-compose: $(VENV)/.installed ## the demo on the example's docker compose stack
	@$(INV) demo --compose

test: $(VENV)/.installed ## install what the tests need, then run unit + integration tests
	@$(INV) test
