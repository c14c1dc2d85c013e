# patchflow's own repository: every target is one `inv` call (see `make help`); the virtualenv is
# created on first use. A PrimeFlow checkout gets the same targets from `inv init`.
VENV := .venv
INV := $(VENV)/bin/inv
# every value reaches the shell single-quoted and unexpanded: VERSION='3.1.0; id' is one argument
PF_Q = '$(subst ','\'',$(1))'
PF_OPT = $(if $(value $(1)),$(2) $(call PF_Q,$(value $(1))),)
PF_ROOT = $(call PF_OPT,ROOT,--root)
PF_VERSION = $(call PF_OPT,VERSION,--version)
PF_YES = $(if $(value YES),--yes,)
PF_DRY_RUN = $(if $(value DRY_RUN),--dry-run,)
PF_FORCE = $(if $(value FORCE),--force,)
# HOST/HOSTS/ROLE count only on the make command line (an app's HOST=0.0.0.0 in the environment is no server)
PF_CLI = $(if $(filter command line,$(origin $(1))), $(call PF_OPT,$(1),$(2)),)
PF_HOST = $(call PF_CLI,HOST,--host)$(call PF_CLI,HOSTS,--hosts)$(call PF_CLI,ROLE,--role)
PF_SERVICE = $(call PF_OPT,SERVICE,--service)
PF_TAIL = $(call PF_OPT,TAIL,--tail)

.DEFAULT_GOAL := help
.PHONY: help patch-status create-patch verify-patch apply-patch rollback-patch prune-backups preflight init \
        baseline-migrations resolve-migration rehearse \
        deploy demo demo-compose test test-slow logs ps up down restart

$(VENV)/.installed: pyproject.toml scripts/bootstrap.sh
	@scripts/bootstrap.sh

help: $(VENV)/.installed ## list the commands and the variables
	@$(INV) --list
	@echo 'Variables: ROOT=path of a PrimeFlow checkout (required here: this repository is the tool, not a project)'
	@echo '           VERSION=x.y.z  YES=1 (no prompt)  DRY_RUN=1  FORCE=1  REHEARSE=1  SERVICE=api  TAIL=100  FOLLOW=1'
	@echo '           HOST=name (or HOSTS=a,b or ROLE=production): deploy, and patch-status / rollback-patch over SSH'

patch-status: $(VENV)/.installed ## installed version, patches, backups, history, interrupted applies (ROOT= HOST= JSON=1)
	@$(INV) patch-status $(PF_ROOT) $(PF_HOST) $(if $(value JSON),--json,)

create-patch: $(VENV)/.installed ## build patches/vX.Y.Z/ (ROOT= VERSION=x.y.z, default: the VERSION file)
	@$(INV) create-patch $(PF_ROOT) $(PF_VERSION) $(PF_FORCE)

verify-patch: $(VENV)/.installed ## check a patch's checksums and manifest (ROOT= VERSION=x.y.z)
	@$(INV) verify-patch $(PF_ROOT) $(PF_VERSION)

apply-patch: $(VENV)/.installed ## apply a patch with backup, health check and automatic rollback (ROOT= VERSION= YES=1)
	@$(INV) apply-patch $(PF_ROOT) $(PF_VERSION) $(PF_YES) $(PF_DRY_RUN) $(PF_FORCE) $(if $(value REHEARSE),--rehearse,)

rollback-patch: $(VENV)/.installed ## restore code, database and VERSION from before a patch (ROOT= VERSION= YES=1 HOST=)
	@$(INV) rollback-patch $(PF_ROOT) $(PF_HOST) $(PF_VERSION) $(PF_YES) $(PF_FORCE)

deploy: $(VENV)/.installed ## upload a patch over SSH and apply it on hosts, rolling (ROOT= HOST=/HOSTS=/ROLE= VERSION= YES=1)
	@$(INV) deploy $(PF_ROOT) $(PF_HOST) $(PF_VERSION) $(PF_YES)

prune-backups: $(VENV)/.installed ## delete old backups (retention; ROOT= DRY_RUN=1)
	@$(INV) prune-backups $(PF_ROOT) $(PF_DRY_RUN)

preflight: $(VENV)/.installed ## the project's lint/typecheck/prisma validate and patchflow's own checks (ROOT=)
	@$(INV) preflight $(PF_ROOT)

baseline-migrations: $(VENV)/.installed ## record the installed migrations in a database without history (ROOT= YES=1)
	@$(INV) baseline-migrations $(PF_ROOT) $(PF_YES)

resolve-migration: $(VENV)/.installed ## resolve a failed migration as prisma migrate resolve does (ROOT= NAME= APPLIED=1 or ROLLED_BACK=1)
	@$(INV) resolve-migration $(PF_ROOT) $(call PF_OPT,NAME,--name) $(if $(value APPLIED),--applied,) $(if $(value ROLLED_BACK),--rolled-back,)

rehearse: $(VENV)/.installed ## run a patch's pending migrations on a copy of the database and time them (ROOT= VERSION=)
	@$(INV) rehearse $(PF_ROOT) $(PF_VERSION)

init: $(VENV)/.installed ## set up patchflow in a PrimeFlow checkout (ROOT=path YES=1)
	@$(INV) init $(PF_ROOT) $(PF_YES) $(PF_DRY_RUN)

logs: $(VENV)/.installed ## service logs (ROOT= SERVICE=api TAIL=100 FOLLOW=1)
	@$(INV) logs $(PF_ROOT) $(PF_SERVICE) $(PF_TAIL) $(if $(value FOLLOW),--follow,)

ps: $(VENV)/.installed ## service states (ROOT=)
	@$(INV) ps $(PF_ROOT)

up: $(VENV)/.installed ## start the stack (ROOT=)
	@$(INV) up $(PF_ROOT)

down: $(VENV)/.installed ## stop the stack, volumes are kept (ROOT=)
	@$(INV) down $(PF_ROOT)

restart: $(VENV)/.installed ## restart services (ROOT= SERVICE=api)
	@$(INV) restart $(PF_ROOT) $(PF_SERVICE)

demo: $(VENV)/.installed ## init a PrimeFlow-shaped checkout, then create/apply/status/rollback through its make targets
	@$(INV) demo

demo-compose: $(VENV)/.installed ## the demo on the example's docker compose stack
	@$(INV) demo --compose

test: $(VENV)/.installed ## install what the tests need, then run unit + integration tests (within 8 minutes)
	@$(INV) test

test-slow: $(VENV)/.installed ## the slow tier: further variants of what make test covers (CI runs both)
	@$(INV) test --slow
