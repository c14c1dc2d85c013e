"""The lifecycle of a patch: create it, apply it, roll it back, recover a killed run.

Apply and rollback are each one tuple of step specs (data) run by one runner that journals every
step (:mod:`patchflow.lifecycle.steps`); create-patch is a step list run by the same runner. This
package's ``__init__`` imports nothing: import the module you need.
"""
