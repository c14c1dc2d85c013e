"""What a migration's SQL creates, drops and renames, read with PostgreSQL's own parser.

The SQL is parsed by pglast (libpg_query: the parser of PostgreSQL 18 itself, so comments,
quoted identifiers, dollar-quoted bodies, ``E''`` strings and case folding are read exactly as the
server reads them). :func:`schema_effects` walks the top-level statements in order and returns
one :class:`Effect` per object a statement creates, drops or renames, with the line of the file
where that statement starts. Statements inside function bodies and ``DO`` blocks run later or
conditionally and are not followed.

Objects are named by a key (:attr:`Effect.key`): ``(namespace, schema, name, parent, detail)``
with namespace one of ``relation`` (tables, views, sequences, indexes, materialized views: they
share one name space per schema), ``type``, ``column``, ``constraint``, ``trigger``, ``policy``,
``schema``, ``extension``, ``function`` (``detail``: the argument types) and ``enum value``.
Unqualified names are in ``default_schema`` (the schema migrations run in: Prisma's
``?schema=``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pglast import ast, parse_sql
from pglast.enums import AlterTableType, ConstrType, FunctionParameterMode, ObjectType
from pglast.parser import ParseError, scan
from pglast.stream import RawStream

Key = tuple[str, str, str, str, str]


@dataclass(frozen=True)
class Effect:
    """One object a statement touches: ``action`` is ``create`` or ``drop`` (a rename is a drop of
    the old name and a create of the new one); ``guarded`` when the statement tolerates the
    object's state (``IF NOT EXISTS``, ``OR REPLACE``, ``IF EXISTS``); ``line`` (1-based) where the
    statement starts in the file; ``statement`` its 0-based index among the file's statements."""

    action: str
    key: Key
    line: int
    guarded: bool = False
    statement: int = 0

    @property
    def namespace(self) -> str:
        return self.key[0]

    @property
    def ident(self) -> Key:
        """The key without the kind of relation or type (they share one name space); a
        function keeps its argument types."""
        namespace, schema, name, parent, detail = self.key
        return (namespace, schema, name, parent, detail if namespace == "function" else "")

    def describe(self) -> str:
        """The object in words: ``table "public"."User"``, ``column "User"."email"``..."""
        namespace, schema, name, parent, detail = self.key
        if namespace in ("schema", "extension"):
            return f'{namespace} "{name}"'
        if namespace == "function":
            return f'function "{schema}"."{name}"({detail})'
        if namespace == "enum value":
            return f'value \'{name}\' of enum "{schema}"."{parent}"'
        if parent:
            return f'{namespace} "{name}" of "{schema}"."{parent}"'
        return f'{detail or namespace} "{schema}"."{name}"'


class SqlUnreadable(Exception):
    """The SQL does not parse (``line`` 1-based, 0 when unknown)."""

    def __init__(self, message: str, line: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


def _line_of(sql: str, offset: int) -> int:
    return sql.count("\n", 0, max(0, offset)) + 1


def _names(nodes: Iterable[ast.Node] | None) -> list[str]:
    return [n.sval or "" for n in nodes or () if isinstance(n, ast.String)]


def _split(names: Sequence[str], default_schema: str) -> tuple[str, str]:
    """``(schema, name)`` of a possibly qualified name list (a leading database name is ignored)."""
    if not names:
        return default_schema, ""
    if len(names) == 1:
        return default_schema, names[0]
    return names[-2], names[-1]


def _rel(var: ast.RangeVar | None, default_schema: str) -> tuple[str, str]:
    if var is None:
        return default_schema, ""
    return var.schemaname or default_schema, var.relname or ""


def _signature(parameters: Iterable[ast.Node] | None, procedure: bool) -> str:
    """The argument types that identify a function (``integer, text[]``): IN, INOUT, VARIADIC
    (and OUT for a procedure, as PostgreSQL 14+ counts them)."""
    counted = {
        FunctionParameterMode.FUNC_PARAM_IN,
        FunctionParameterMode.FUNC_PARAM_INOUT,
        FunctionParameterMode.FUNC_PARAM_VARIADIC,
        FunctionParameterMode.FUNC_PARAM_DEFAULT,
    }
    if procedure:
        counted.add(FunctionParameterMode.FUNC_PARAM_OUT)
    types = []
    for param in parameters or ():
        if isinstance(param, ast.FunctionParameter) and param.mode in counted and param.argType is not None:
            types.append(RawStream()(param.argType))
    return ", ".join(types)


RELATION_KINDS = {
    ObjectType.OBJECT_TABLE: "table",
    ObjectType.OBJECT_VIEW: "view",
    ObjectType.OBJECT_MATVIEW: "materialized view",
    ObjectType.OBJECT_SEQUENCE: "sequence",
    ObjectType.OBJECT_INDEX: "index",
    ObjectType.OBJECT_FOREIGN_TABLE: "foreign table",
}
TYPE_KINDS = {ObjectType.OBJECT_TYPE: "type", ObjectType.OBJECT_DOMAIN: "domain"}
# constraints backed by an index of the same name (a relation of the schema)
INDEXED_CONSTRAINTS = {ConstrType.CONSTR_PRIMARY, ConstrType.CONSTR_UNIQUE, ConstrType.CONSTR_EXCLUSION}


class _Walker:
    def __init__(self, sql: str, default_schema: str) -> None:
        self.sql = sql
        self.schema = default_schema
        self.effects: list[Effect] = []
        self.line = 1
        self.index = 0

    def add(self, action: str, key: Key, *, guarded: bool = False) -> None:
        self.effects.append(Effect(action, key, self.line, guarded, self.index))

    def relation(self, action: str, schema: str, name: str, kind: str, *, guarded: bool = False) -> None:
        if name:
            self.add(action, ("relation", schema, name, "", kind), guarded=guarded)

    def statement(self, node: ast.Node, schema: str) -> None:
        if isinstance(node, ast.CreateStmt):
            rel_schema, name = _rel(node.relation, schema)
            self.relation("create", rel_schema, name, "table", guarded=bool(node.if_not_exists))
            for element in node.tableElts or ():
                if isinstance(element, ast.Constraint) and element.conname and element.contype in INDEXED_CONSTRAINTS:
                    self.relation("create", rel_schema, element.conname, "index", guarded=bool(node.if_not_exists))
        elif isinstance(node, ast.CreateTableAsStmt) and node.into is not None:
            rel_schema, name = _rel(node.into.rel, schema)
            kind = RELATION_KINDS.get(node.objtype, "table") if node.objtype is not None else "table"
            self.relation("create", rel_schema, name, kind, guarded=bool(node.if_not_exists))
        elif isinstance(node, ast.ViewStmt):
            rel_schema, name = _rel(node.view, schema)
            self.relation("create", rel_schema, name, "view", guarded=bool(node.replace))
        elif isinstance(node, ast.IndexStmt) and node.idxname:
            rel_schema, _ = _rel(node.relation, schema)
            self.relation("create", rel_schema, node.idxname, "index", guarded=bool(node.if_not_exists))
        elif isinstance(node, ast.CreateSeqStmt):
            rel_schema, name = _rel(node.sequence, schema)
            self.relation("create", rel_schema, name, "sequence", guarded=bool(node.if_not_exists))
        elif isinstance(node, (ast.CreateEnumStmt, ast.CreateRangeStmt)):
            type_schema, name = _split(_names(node.typeName), schema)
            self.add("create", ("type", type_schema, name, "", "type"))
        elif isinstance(node, ast.CompositeTypeStmt):
            type_schema, name = _rel(node.typevar, schema)
            self.add("create", ("type", type_schema, name, "", "type"))
        elif isinstance(node, ast.CreateDomainStmt):
            type_schema, name = _split(_names(node.domainname), schema)
            self.add("create", ("type", type_schema, name, "", "domain"))
        elif isinstance(node, ast.DefineStmt) and node.kind == ObjectType.OBJECT_TYPE:
            type_schema, name = _split(_names(node.defnames), schema)
            self.add("create", ("type", type_schema, name, "", "type"), guarded=bool(node.if_not_exists))
        elif isinstance(node, ast.CreateSchemaStmt) and node.schemaname:
            self.add("create", ("schema", "", node.schemaname, "", ""), guarded=bool(node.if_not_exists))
            for element in node.schemaElts or ():
                self.statement(element, node.schemaname)
        elif isinstance(node, ast.CreateExtensionStmt):
            self.add("create", ("extension", "", node.extname or "", "", ""), guarded=bool(node.if_not_exists))
        elif isinstance(node, ast.CreateFunctionStmt):
            func_schema, name = _split(_names(node.funcname), schema)
            signature = _signature(node.parameters, bool(node.is_procedure))
            self.add("create", ("function", func_schema, name, "", signature), guarded=bool(node.replace))
        elif isinstance(node, ast.CreateTrigStmt) and node.trigname:
            rel_schema, table = _rel(node.relation, schema)
            self.add("create", ("trigger", rel_schema, node.trigname, table, ""), guarded=bool(node.replace))
        elif isinstance(node, ast.CreatePolicyStmt) and node.policy_name:
            rel_schema, table = _rel(node.table, schema)
            self.add("create", ("policy", rel_schema, node.policy_name, table, ""))
        elif isinstance(node, ast.AlterTableStmt):
            self.alter_table(node, schema)
        elif isinstance(node, ast.AlterEnumStmt) and node.newVal:
            type_schema, name = _split(_names(node.typeName), schema)
            if node.oldVal:
                self.add("drop", ("enum value", type_schema, node.oldVal, name, ""))
            guarded = bool(node.skipIfNewValExists)
            self.add("create", ("enum value", type_schema, node.newVal, name, ""), guarded=guarded)
        elif isinstance(node, ast.RenameStmt):
            self.rename(node, schema)
        elif isinstance(node, ast.DropStmt):
            self.drop(node, schema)

    def alter_table(self, node: ast.AlterTableStmt, schema: str) -> None:
        rel_schema, table = _rel(node.relation, schema)
        for cmd in node.cmds or ():
            if not isinstance(cmd, ast.AlterTableCmd):
                continue
            if cmd.subtype == AlterTableType.AT_AddColumn and isinstance(cmd.def_, ast.ColumnDef) and cmd.def_.colname:
                key: Key = ("column", rel_schema, cmd.def_.colname, table, "")
                self.add("create", key, guarded=bool(cmd.missing_ok))
            elif cmd.subtype == AlterTableType.AT_AddConstraint and isinstance(cmd.def_, ast.Constraint):
                constraint = cmd.def_
                if constraint.conname:
                    self.add("create", ("constraint", rel_schema, constraint.conname, table, ""))
                    if constraint.contype in INDEXED_CONSTRAINTS:
                        self.relation("create", rel_schema, constraint.conname, "index")
            elif cmd.subtype == AlterTableType.AT_DropColumn and cmd.name:
                self.add("drop", ("column", rel_schema, cmd.name, table, ""), guarded=bool(cmd.missing_ok))
            elif cmd.subtype == AlterTableType.AT_DropConstraint and cmd.name:
                self.add("drop", ("constraint", rel_schema, cmd.name, table, ""), guarded=bool(cmd.missing_ok))
                self.relation("drop", rel_schema, cmd.name, "index", guarded=True)

    def rename(self, node: ast.RenameStmt, schema: str) -> None:
        kind = node.renameType
        new = node.newname or ""
        rel_schema, table = _rel(node.relation, schema)
        if kind in RELATION_KINDS and node.relation is not None:
            self.relation("drop", rel_schema, table, RELATION_KINDS[kind])
            self.relation("create", rel_schema, new, RELATION_KINDS[kind])
        elif kind == ObjectType.OBJECT_COLUMN and node.subname:
            self.add("drop", ("column", rel_schema, node.subname, table, ""))
            self.add("create", ("column", rel_schema, new, table, ""))
        elif kind == ObjectType.OBJECT_TABCONSTRAINT and node.subname:
            self.add("drop", ("constraint", rel_schema, node.subname, table, ""))
            self.add("create", ("constraint", rel_schema, new, table, ""))
        elif kind == ObjectType.OBJECT_TRIGGER and node.subname:
            self.add("drop", ("trigger", rel_schema, node.subname, table, ""))
            self.add("create", ("trigger", rel_schema, new, table, ""))
        elif kind in TYPE_KINDS and isinstance(node.object, (tuple, list)):
            type_schema, name = _split(_names(node.object), schema)
            self.add("drop", ("type", type_schema, name, "", TYPE_KINDS[kind]))
            self.add("create", ("type", type_schema, new, "", TYPE_KINDS[kind]))
        elif kind == ObjectType.OBJECT_SCHEMA and node.subname:
            self.add("drop", ("schema", "", node.subname, "", ""))
            self.add("create", ("schema", "", new, "", ""))

    def drop(self, node: ast.DropStmt, schema: str) -> None:
        kind = node.removeType
        guarded = bool(node.missing_ok)
        for obj in node.objects or ():
            if kind in RELATION_KINDS and isinstance(obj, (tuple, list)):
                rel_schema, name = _split(_names(obj), schema)
                self.add("drop", ("relation", rel_schema, name, "", RELATION_KINDS[kind]), guarded=guarded)
            elif kind in TYPE_KINDS and isinstance(obj, ast.TypeName):
                type_schema, name = _split(_names(obj.names), schema)
                self.add("drop", ("type", type_schema, name, "", TYPE_KINDS[kind]), guarded=guarded)
            elif kind == ObjectType.OBJECT_SCHEMA and isinstance(obj, ast.String):
                self.add("drop", ("schema", "", obj.sval or "", "", ""), guarded=guarded)
            elif kind == ObjectType.OBJECT_EXTENSION and isinstance(obj, ast.String):
                self.add("drop", ("extension", "", obj.sval or "", "", ""), guarded=guarded)
            elif kind in (ObjectType.OBJECT_FUNCTION, ObjectType.OBJECT_PROCEDURE, ObjectType.OBJECT_ROUTINE) and (
                isinstance(obj, ast.ObjectWithArgs)
            ):
                func_schema, name = _split(_names(obj.objname), schema)
                signature = "*" if obj.args_unspecified else ", ".join(RawStream()(t) for t in obj.objargs or ())
                self.add("drop", ("function", func_schema, name, "", signature), guarded=guarded)
            elif kind in (ObjectType.OBJECT_TRIGGER, ObjectType.OBJECT_POLICY) and isinstance(obj, (tuple, list)):
                names = _names(obj)
                if len(names) >= 2:
                    table_schema, table = _split(names[:-1], schema)
                    namespace = "trigger" if kind == ObjectType.OBJECT_TRIGGER else "policy"
                    self.add("drop", (namespace, table_schema, names[-1], table, ""), guarded=guarded)


def schema_effects(sql: str, default_schema: str = "public") -> list[Effect]:
    """The objects the top-level statements of ``sql`` create, drop and rename, in order.

    Raises:
        SqlUnreadable: PostgreSQL's parser rejects the SQL (message and line of the error).
    """
    try:
        statements = parse_sql(sql)
        tokens = scan(sql)
    except ParseError as exc:
        location = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else -1
        message = str(exc.args[0]) if exc.args else str(exc)
        raise SqlUnreadable(message, _line_of(sql, location) if location >= 0 else 0) from None
    starts = [t.start for t in tokens if t.name not in ("SQL_COMMENT", "C_COMMENT")]
    walker = _Walker(sql, default_schema)
    index = 0
    for number, raw in enumerate(statements):
        walker.index = number
        # the statement's first token: its location may include the comments before it
        location = raw.stmt_location or 0
        while index < len(starts) and starts[index] < location:
            index += 1
        walker.line = _line_of(sql, starts[index] if index < len(starts) else location)
        if raw.stmt is not None:
            walker.statement(raw.stmt, default_schema)
    return walker.effects
