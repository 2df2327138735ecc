#!/usr/bin/python3
"""Check the project's .proto files against the contract fact sheets.

Compiles proto/*.proto with protoc into a FileDescriptorSet, parses the
markdown fact tables of openshell-v1.md and compute-v1.md and compares:

  * files: package and imports (the "Packages, files, imports" table and the
    compute "Package ...; imports ..." bullet);
  * enums: every value name and number, no extra values;
  * messages: every field number, name, type and label (scalar, enum,
    message, map key/value, repeated, oneof membership, proto3 `optional`
    either as real proto3_optional or as a one-member oneof named
    `_<field>`), the wire type column, the `secret` field option for
    "[secret-marked]" fields, reserved numbers and names, no extra fields;
  * the compact Appendix A (SandboxPolicy tree) the same way;
  * RPCs: every method path, request/response types, streaming kind and the
    `authorization` method option (auth mode / scope / role columns);
  * the standard grpc.health.v1 and grpc.reflection.v1alpha protos against a
    built-in description (skip with --no-standard).

Prints one line per mismatch and finally
  contract check: N checked, M mismatches
Exit status: 0 = no mismatch, 1 = mismatches, 2 = could not run.

Usage: check_proto_contract.py [CONTRACT_DIR] [--repo DIR] [--protoc PATH]
                               [--include DIR] [--no-standard] [-v]
CONTRACT_DIR defaults to $OPENSHELL_CONTRACT_DIR or <repo>/../shared/contract.

Runs with Debian's /usr/bin/python3 and python3-protobuf (3.21); no other
dependencies.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

try:
    from google.protobuf import descriptor_pb2
except ImportError:  # pragma: no cover
    sys.stderr.write("check_proto_contract: python3-protobuf is required\n")
    sys.exit(2)

FDP = descriptor_pb2.FieldDescriptorProto

AUTHORIZATION_EXT = 50000  # MethodOptions extension, AuthorizationRule
SECRET_EXT = 50001         # FieldOptions extension, bool

SCALARS = {
    "double": FDP.TYPE_DOUBLE,
    "float": FDP.TYPE_FLOAT,
    "int32": FDP.TYPE_INT32,
    "int64": FDP.TYPE_INT64,
    "uint32": FDP.TYPE_UINT32,
    "uint64": FDP.TYPE_UINT64,
    "sint32": FDP.TYPE_SINT32,
    "sint64": FDP.TYPE_SINT64,
    "fixed32": FDP.TYPE_FIXED32,
    "fixed64": FDP.TYPE_FIXED64,
    "sfixed32": FDP.TYPE_SFIXED32,
    "sfixed64": FDP.TYPE_SFIXED64,
    "bool": FDP.TYPE_BOOL,
    "string": FDP.TYPE_STRING,
    "bytes": FDP.TYPE_BYTES,
}
TYPE_NAMES = {v: k for k, v in SCALARS.items()}
TYPE_NAMES[FDP.TYPE_ENUM] = "enum"
TYPE_NAMES[FDP.TYPE_MESSAGE] = "message"
TYPE_NAMES[FDP.TYPE_GROUP] = "group"

WIRE_OF_TYPE = {
    FDP.TYPE_DOUBLE: "I64", FDP.TYPE_FIXED64: "I64", FDP.TYPE_SFIXED64: "I64",
    FDP.TYPE_FLOAT: "I32", FDP.TYPE_FIXED32: "I32", FDP.TYPE_SFIXED32: "I32",
    FDP.TYPE_INT32: "VARINT", FDP.TYPE_INT64: "VARINT",
    FDP.TYPE_UINT32: "VARINT", FDP.TYPE_UINT64: "VARINT",
    FDP.TYPE_SINT32: "VARINT", FDP.TYPE_SINT64: "VARINT",
    FDP.TYPE_BOOL: "VARINT", FDP.TYPE_ENUM: "VARINT",
    FDP.TYPE_STRING: "LEN", FDP.TYPE_BYTES: "LEN", FDP.TYPE_MESSAGE: "LEN",
}

STREAMING = {
    "unary": (False, False),
    "server-stream": (False, True),
    "client-stream": (True, False),
    "bidi": (True, True),
}

DASHES = ("", "-", "\u2014", "\u2013")


# --------------------------------------------------------------------------
# Minimal protobuf wire decoding (for custom options kept as unknown fields)
# --------------------------------------------------------------------------

def _varint(buf, pos):
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def wire_fields(buf):
    """Yield (number, wire_type, value) for each field of an encoded message.
    value is an int for VARINT/I64/I32 and bytes for LEN."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, pos = _varint(buf, pos)
        elif wt == 1:
            val = int.from_bytes(buf[pos:pos + 8], "little")
            pos += 8
        elif wt == 2:
            n, pos = _varint(buf, pos)
            val = bytes(buf[pos:pos + n])
            pos += n
        elif wt == 5:
            val = int.from_bytes(buf[pos:pos + 4], "little")
            pos += 4
        else:
            raise ValueError("unsupported wire type %d" % wt)
        if pos > len(buf):
            raise ValueError("truncated field")
        yield num, wt, val


def option_fields(options_msg):
    """Encoded fields of an options message (extensions unknown to the
    Python runtime survive as unknown fields and are re-serialized)."""
    return list(wire_fields(options_msg.SerializeToString()))


def field_is_secret(field):
    if not field.HasField("options"):
        return False
    secret = False
    for num, wt, val in option_fields(field.options):
        if num == SECRET_EXT and wt == 0:
            secret = bool(val)
    return secret


def method_authorization(method):
    """Return the AuthorizationRule of a method as a dict, or None."""
    if not method.HasField("options"):
        return None
    rule = None
    for num, wt, val in option_fields(method.options):
        if num == AUTHORIZATION_EXT and wt == 2:
            if rule is None:
                rule = {"auth_mode": "", "workspace_role": "",
                        "global_role": "", "scope": ""}
            names = {1: "auth_mode", 2: "workspace_role",
                     3: "global_role", 4: "scope"}
            for n2, wt2, v2 in wire_fields(val):
                if n2 in names and wt2 == 2:
                    rule[names[n2]] = v2.decode("utf-8", "replace")
    return rule


# --------------------------------------------------------------------------
# Descriptor index
# --------------------------------------------------------------------------

class Index:
    def __init__(self, fds):
        self.files = {}
        self.messages = {}   # full name -> DescriptorProto
        self.enums = {}      # full name -> EnumDescriptorProto
        self.services = {}   # full name -> ServiceDescriptorProto
        for f in fds.file:
            self.files[f.name] = f
            prefix = f.package + "." if f.package else ""
            for m in f.message_type:
                self._add_message(prefix + m.name, m)
            for e in f.enum_type:
                self.enums[prefix + e.name] = e
            for s in f.service:
                self.services[prefix + s.name] = s

    def _add_message(self, full, m):
        self.messages[full] = m
        for n in m.nested_type:
            self._add_message(full + "." + n.name, n)
        for e in m.enum_type:
            self.enums[full + "." + e.name] = e


# --------------------------------------------------------------------------
# Contract (markdown) parsing
# --------------------------------------------------------------------------

class ContractField:
    def __init__(self, number, name, type_text, wire, meaning, where):
        self.number = number
        self.name = name
        self.type_text = type_text
        self.wire = wire
        self.meaning = meaning
        self.where = where
        self.secret = "[secret-marked]" in (meaning or "")


class ContractMessage:
    def __init__(self, full, where):
        self.full = full
        self.where = where
        self.fields = []
        self.reserved_numbers = []
        self.reserved_names = []
        self.saw_table = False
        self.saw_no_fields = False
        self.check_secret = True  # compact appendix rows carry no meaning


class ContractEnum:
    def __init__(self, full, where):
        self.full = full
        self.where = where
        self.values = []  # (name, number)


class ContractRpc:
    def __init__(self, path, req, resp, streaming, auth, where):
        self.path = path
        self.req = req
        self.resp = resp
        self.streaming = streaming
        self.auth = auth  # None or (mode, scope, role)
        self.where = where


class Contract:
    def __init__(self):
        self.messages = []
        self.enums = []
        self.rpcs = []
        self.files = []    # (file, package, [imports], where)
        self.problems = []  # parse problems (counted as mismatches)


def cells(line):
    s = line.strip()
    if not s.startswith("|"):
        return None
    s = s[1:]
    if s.endswith("|"):
        s = s[:-1]
    return [c.strip() for c in s.split("|")]


def unquote(s):
    return s.replace("`", "").strip()


def is_separator(row):
    return all(re.fullmatch(r":?-{2,}:?", c or "---") for c in row)


HEADING_PKG = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*(?:\((?P<pkg>[A-Za-z0-9_.]+)\))?\s*$")


def parse_numbers(text):
    nums = []
    for part in re.split(r"[,\s]+", text.strip()):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            continue
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) else lo
        nums.extend(range(lo, hi + 1))
    return nums


def parse_contract_file(path, default_pkg, contract):
    base = os.path.basename(path)
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().splitlines()

    # Default package from the title line when it names one.
    for line in lines:
        if line.startswith("# "):
            m = re.search(r"package `([A-Za-z0-9_.]+)`", line)
            if m:
                default_pkg = m.group(1)
            break

    section = None          # current "##" heading text
    appendix_pkg = None     # package when inside the compact appendix
    current = None          # ContractMessage / ContractEnum / None
    table_kind = None       # kind of the table being read
    table_header = None

    def where(lineno):
        return "%s:%d" % (base, lineno)

    def finish():
        if isinstance(current, ContractMessage):
            if not current.saw_table and not current.saw_no_fields:
                contract.problems.append(
                    "%s: contract section for %s has neither a field table "
                    "nor 'No fields' (not parsed)" % (current.where, current.full))

    for i, raw in enumerate(lines, 1):
        line = raw.rstrip()

        if line.startswith("## ") or line.startswith("# "):
            finish()
            current = None
            table_kind = None
            section = line.lstrip("#").strip()
            appendix_pkg = None
            if section.lower().startswith("appendix"):
                m = re.search(r"package ([A-Za-z0-9_.]+)", section)
                appendix_pkg = m.group(1) if m else None
            continue

        if line.startswith("### "):
            finish()
            current = None
            table_kind = None
            title = line[4:].strip()
            is_enum = False
            if title.startswith("enum "):
                is_enum = True
                title = title[5:].strip()
            m = HEADING_PKG.match(title)
            if not m:
                continue
            pkg = m.group("pkg") or default_pkg
            full = pkg + "." + m.group("name")
            if is_enum:
                current = ContractEnum(full, where(i))
                contract.enums.append(current)
            else:
                current = ContractMessage(full, where(i))
                contract.messages.append(current)
            continue

        # Compute-style bullet: "Package `X`; imports `a`, `b`."
        m = re.match(r"^\s*[-*]\s*Package `([A-Za-z0-9_.]+)`;\s*imports (.*?)\.\s", line + " ")
        if m:
            pkg = m.group(1)
            imports = re.findall(r"`([^`]+\.proto)`", m.group(2))
            fname = {
                "openshell.compute.v1": "compute_driver.proto",
            }.get(pkg)
            mm = re.search(r"files `proto/([^`]+\.proto)`", "\n".join(lines[:10]))
            if mm:
                fname = mm.group(1)
            if fname:
                contract.files.append((fname, pkg, imports, where(i)))
            continue

        if isinstance(current, ContractMessage):
            if line.startswith("No fields"):
                current.saw_no_fields = True
                continue
            m = re.match(r"^Reserved numbers:\s*([^;]*?)(?:;\s*reserved names:\s*(.*?))?\.?(?:\s+Never.*)?$", line)
            if m:
                current.reserved_numbers.extend(parse_numbers(m.group(1)))
                if m.group(2):
                    current.reserved_names.extend(
                        unquote(n) for n in m.group(2).split(",") if unquote(n))
                continue

        row = cells(line)
        if row is None:
            table_kind = None
            table_header = None
            continue
        if is_separator(row):
            continue

        # Header rows decide the table kind.
        head = [c.lower() for c in row]
        if head and head[0] in ("#", "value", "method path", "proto file", "message", "public (openshell.v1)"):
            table_header = head
            if head[0] == "#" and isinstance(current, ContractMessage):
                table_kind = "fields"
                current.saw_table = True
            elif head[0] == "value" and isinstance(current, ContractEnum):
                table_kind = "enum"
            elif head[0] == "method path":
                table_kind = "rpc"
            elif head[0] == "proto file":
                table_kind = "files"
            elif head[0] == "message" and appendix_pkg:
                table_kind = "appendix"
            else:
                table_kind = None
            continue

        if table_kind == "fields":
            if len(row) < 4 or not re.fullmatch(r"\d+", row[0]):
                contract.problems.append("%s: unparsed field row: %s" % (where(i), line))
                continue
            meaning = "|".join(row[4:]) if len(row) > 4 else ""
            current.fields.append(ContractField(
                int(row[0]), unquote(row[1]), unquote(row[2]),
                unquote(row[3]).split()[0] if row[3].strip() else "",
                meaning, where(i)))
        elif table_kind == "enum":
            if len(row) < 2 or not re.fullmatch(r"-?\d+", row[1]):
                contract.problems.append("%s: unparsed enum row: %s" % (where(i), line))
                continue
            current.values.append((unquote(row[0]), int(row[1])))
        elif table_kind == "rpc":
            if len(row) < 4:
                contract.problems.append("%s: unparsed rpc row: %s" % (where(i), line))
                continue
            auth = None
            if table_header and len(table_header) >= 7 and "auth mode" in table_header[4]:
                auth = (unquote(row[4]), unquote(row[5]), unquote(row[6]))
            contract.rpcs.append(ContractRpc(
                unquote(row[0]), unquote(row[1]), unquote(row[2]),
                unquote(row[3]).lower(), auth, where(i)))
        elif table_kind == "files":
            if len(row) < 3:
                continue
            imports = re.findall(r"`([^`]+)`", row[2])
            contract.files.append((unquote(row[0]), unquote(row[1]), imports, where(i)))
        elif table_kind == "appendix":
            parse_appendix_row(row, appendix_pkg, where(i), contract)

    finish()


def parse_appendix_row(row, pkg, wh, contract):
    if len(row) < 2:
        return
    name = unquote(row[0])
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        contract.problems.append("%s: unparsed appendix row name %r" % (wh, name))
        return
    msg = ContractMessage(pkg + "." + name, wh)
    msg.saw_table = True
    msg.check_secret = False
    text = "|".join(row[1:])
    parts = re.split(r"\s+[\u2014]\s+|\s+--\s+", text)
    fields_text = parts[0]
    for extra in parts[1:]:
        m = re.match(r"reserved\s+(.*)$", extra.strip())
        if m:
            for item in m.group(1).split(","):
                item = item.strip().strip(".")
                if re.fullmatch(r"\d+(?:-\d+)?", item):
                    msg.reserved_numbers.extend(parse_numbers(item))
                elif item:
                    msg.reserved_names.append(item.strip('"'))
        else:
            contract.problems.append("%s: unparsed appendix note %r" % (wh, extra))
    for item in fields_text.split(";"):
        item = item.strip()
        if not item:
            continue
        m = re.fullmatch(r"(\d+)\s+([A-Za-z_][A-Za-z0-9_]*)\s*:\s*(.+)", item)
        if not m:
            contract.problems.append("%s: unparsed appendix field %r in %s" % (wh, item, name))
            continue
        msg.fields.append(ContractField(int(m.group(1)), m.group(2),
                                        unquote(m.group(3)), "", "", wh))
    contract.messages.append(msg)


# Standard gRPC protocols the gateway serves besides the contract (not in
# the fact sheets; well known). Same compact format as Appendix A.
STANDARD_MESSAGES = [
    ("grpc.health.v1", "HealthCheckRequest", "1 service: string"),
    ("grpc.health.v1", "HealthCheckResponse", "1 status: enum grpc.health.v1.HealthCheckResponse.ServingStatus"),
    ("grpc.reflection.v1alpha", "ServerReflectionRequest",
     "1 host: string; 3 file_by_filename: oneof message_request: string; "
     "4 file_containing_symbol: oneof message_request: string; "
     "5 file_containing_extension: oneof message_request: ExtensionRequest; "
     "6 all_extension_numbers_of_type: oneof message_request: string; "
     "7 list_services: oneof message_request: string"),
    ("grpc.reflection.v1alpha", "ExtensionRequest", "1 containing_type: string; 2 extension_number: int32"),
    ("grpc.reflection.v1alpha", "ServerReflectionResponse",
     "1 valid_host: string; 2 original_request: ServerReflectionRequest; "
     "4 file_descriptor_response: oneof message_response: FileDescriptorResponse; "
     "5 all_extension_numbers_response: oneof message_response: ExtensionNumberResponse; "
     "6 list_services_response: oneof message_response: ListServiceResponse; "
     "7 error_response: oneof message_response: ErrorResponse"),
    ("grpc.reflection.v1alpha", "FileDescriptorResponse", "1 file_descriptor_proto: repeated bytes"),
    ("grpc.reflection.v1alpha", "ExtensionNumberResponse",
     "1 base_type_name: string; 2 extension_number: repeated int32"),
    ("grpc.reflection.v1alpha", "ListServiceResponse", "1 service: repeated ServiceResponse"),
    ("grpc.reflection.v1alpha", "ServiceResponse", "1 name: string"),
    ("grpc.reflection.v1alpha", "ErrorResponse", "1 error_code: int32; 2 error_message: string"),
]
STANDARD_ENUMS = [
    ("grpc.health.v1.HealthCheckResponse.ServingStatus",
     [("UNKNOWN", 0), ("SERVING", 1), ("NOT_SERVING", 2), ("SERVICE_UNKNOWN", 3)]),
]
STANDARD_RPCS = [
    ("/grpc.health.v1.Health/Check", "HealthCheckRequest", "HealthCheckResponse", "unary"),
    ("/grpc.health.v1.Health/Watch", "HealthCheckRequest", "HealthCheckResponse", "server-stream"),
    ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
     "ServerReflectionRequest", "ServerReflectionResponse", "bidi"),
]
STANDARD_FILES = [
    ("grpc/health/v1/health.proto", "grpc.health.v1", []),
    ("grpc/reflection/v1alpha/reflection.proto", "grpc.reflection.v1alpha", []),
]


def add_standard(contract):
    where = "standard"
    for pkg, name, fields in STANDARD_MESSAGES:
        parse_appendix_row([name, fields], pkg, where, contract)
    for full, values in STANDARD_ENUMS:
        ce = ContractEnum(full, where)
        ce.values = list(values)
        contract.enums.append(ce)
    for path, req, resp, kind in STANDARD_RPCS:
        contract.rpcs.append(ContractRpc(path, req, resp, kind, None, where))
    for fname, pkg, imports in STANDARD_FILES:
        contract.files.append((fname, pkg, imports, where))


# --------------------------------------------------------------------------
# Type expressions
# --------------------------------------------------------------------------

class TypeSpec:
    """Parsed contract type: kind in scalar/enum/message/map, label in
    single/repeated/optional, oneof group or None."""

    def __init__(self):
        self.kind = None
        self.name = None      # scalar name or full type name
        self.key = None       # map key TypeSpec
        self.value = None     # map value TypeSpec
        self.label = "single"
        self.oneof = None
        self.deprecated = False
        self.error = None


def resolve(name, pkg):
    name = name.strip().lstrip(".")
    if "." in name:
        return name
    return pkg + "." + name if pkg else name


def parse_base_type(text, pkg):
    t = TypeSpec()
    text = text.strip()
    if text.startswith("enum "):
        t.kind = "enum"
        t.name = resolve(text[5:], pkg)
    elif text in SCALARS:
        t.kind = "scalar"
        t.name = text
    elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", text):
        t.kind = "message"
        t.name = resolve(text, pkg)
    else:
        t.error = "cannot parse type %r" % text
    return t


def parse_type(text, pkg):
    text = text.strip()
    deprecated = False
    m = re.match(r"^(.*?)\s*\(deprecated\)\s*$", text)
    if m:
        text = m.group(1)
        deprecated = True
    oneof = None
    m = re.match(r"^oneof\s+([A-Za-z_][A-Za-z0-9_]*)\s*:\s*(.*)$", text)
    if m:
        oneof = m.group(1)
        text = m.group(2).strip()
    label = "single"
    if text.startswith("repeated "):
        label = "repeated"
        text = text[len("repeated "):].strip()
    elif text.startswith("optional "):
        label = "optional"
        text = text[len("optional "):].strip()
    m = re.fullmatch(r"map\s*<\s*([^,>]+?)\s*,\s*([^>]+?)\s*>", text)
    if m:
        t = TypeSpec()
        t.kind = "map"
        t.key = parse_base_type(m.group(1), pkg)
        t.value = parse_base_type(m.group(2), pkg)
        t.error = t.key.error or t.value.error
    else:
        t = parse_base_type(text, pkg)
    t.label = label
    t.oneof = oneof
    t.deprecated = deprecated
    return t


def describe_field(index, msg, f):
    """Human-readable type/label of one of our fields."""
    if f.type == FDP.TYPE_MESSAGE:
        entry = index.messages.get(f.type_name.lstrip("."))
        if entry is not None and entry.options.map_entry:
            kv = {x.number: x for x in entry.field}
            return "map<%s, %s>" % (describe_base(kv.get(1)), describe_base(kv.get(2)))
    base = describe_base(f)
    if f.label == FDP.LABEL_REPEATED:
        return "repeated " + base
    if f.proto3_optional:
        return "optional " + base
    if f.HasField("oneof_index"):
        return "oneof %s: %s" % (msg.oneof_decl[f.oneof_index].name, base)
    return base


def describe_base(f):
    if f is None:
        return "?"
    if f.type == FDP.TYPE_ENUM:
        return "enum " + f.type_name.lstrip(".")
    if f.type == FDP.TYPE_MESSAGE:
        return f.type_name.lstrip(".")
    return TYPE_NAMES.get(f.type, str(f.type))


def base_matches(spec, f):
    if spec.kind == "scalar":
        return f.type == SCALARS[spec.name]
    if spec.kind == "enum":
        return f.type == FDP.TYPE_ENUM and f.type_name.lstrip(".") == spec.name
    if spec.kind == "message":
        return f.type == FDP.TYPE_MESSAGE and f.type_name.lstrip(".") == spec.name
    return False


# --------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------

class Checker:
    def __init__(self, index, verbose=False):
        self.index = index
        self.checked = 0
        self.mismatches = []
        self.verbose = verbose

    def check(self, ok, where, text):
        self.checked += 1
        if not ok:
            self.mismatches.append("%s: %s" % (where, text))
        return ok

    # ---- files ----
    def check_file(self, fname, pkg, imports, where):
        f = self.index.files.get(fname)
        if not self.check(f is not None, where, "file %s missing from the descriptor set" % fname):
            return
        self.check(f.package == pkg, where,
                   "%s: package %r, contract says %r" % (fname, f.package, pkg))
        self.check(sorted(f.dependency) == sorted(imports), where,
                   "%s: imports %s, contract says %s" % (fname, sorted(f.dependency), sorted(imports)))
        self.check(f.syntax == "proto3", where,
                   "%s: syntax %r, contract says proto3" % (fname, f.syntax or "proto2"))

    # ---- enums ----
    def check_enum(self, ce):
        e = self.index.enums.get(ce.full)
        if not self.check(e is not None, ce.where, "enum %s missing" % ce.full):
            return
        ours = {v.name: v.number for v in e.value}
        for name, number in ce.values:
            if name not in ours:
                self.check(False, ce.where, "enum %s: value %s missing" % (ce.full, name))
            else:
                self.check(ours[name] == number, ce.where,
                           "enum %s: %s = %d, contract says %d" % (ce.full, name, ours[name], number))
        contract_names = {n for n, _ in ce.values}
        for v in e.value:
            if v.name not in contract_names:
                self.check(False, ce.where,
                           "enum %s: extra value %s = %d not in the contract" % (ce.full, v.name, v.number))

    # ---- messages ----
    def check_message(self, cm):
        m = self.index.messages.get(cm.full)
        if not self.check(m is not None, cm.where, "message %s missing" % cm.full):
            return
        pkg = cm.full.rsplit(".", 1)[0]
        by_num = {f.number: f for f in m.field}
        contract_nums = set()
        for cf in cm.fields:
            contract_nums.add(cf.number)
            self.check_field(cm, m, pkg, cf, by_num.get(cf.number))
        for f in m.field:
            if f.number not in contract_nums:
                self.check(False, cm.where, "%s: extra field %d %s (%s) not in the contract"
                           % (cm.full, f.number, f.name, describe_field(self.index, m, f)))
        # reserved numbers / names
        ranges = [(r.start, r.end) for r in m.reserved_range]  # end exclusive
        for n in cm.reserved_numbers:
            self.check(any(lo <= n < hi for lo, hi in ranges), cm.where,
                       "%s: number %d not declared reserved" % (cm.full, n))
        for name in cm.reserved_names:
            self.check(name in m.reserved_name, cm.where,
                       "%s: name %r not declared reserved" % (cm.full, name))
        for lo, hi in ranges:
            for n in range(lo, min(hi, lo + 1000)):
                if n not in cm.reserved_numbers:
                    self.check(False, cm.where,
                               "%s: reserves %d, which the contract does not list" % (cm.full, n))

    def check_field(self, cm, m, pkg, cf, f):
        label = "%s.%s (#%d)" % (cm.full, cf.name, cf.number)
        spec = parse_type(cf.type_text, pkg)
        if spec.error:
            self.check(False, cf.where, "%s: contract type %r: %s" % (label, cf.type_text, spec.error))
            return
        if not self.check(f is not None, cf.where, "%s: field missing" % label):
            return
        self.check(f.name == cf.name, cf.where,
                   "%s: our field %d is named %r" % (label, cf.number, f.name))

        ours = describe_field(self.index, m, f)
        problems = []

        # type
        entry = None
        if f.type == FDP.TYPE_MESSAGE:
            entry = self.index.messages.get(f.type_name.lstrip("."))
        is_map = entry is not None and entry.options.map_entry
        if spec.kind == "map":
            if not is_map:
                problems.append("not a map")
            else:
                kv = {x.number: x for x in entry.field}
                if not (kv.get(1) is not None and base_matches(spec.key, kv[1])):
                    problems.append("map key type differs")
                if not (kv.get(2) is not None and base_matches(spec.value, kv[2])):
                    problems.append("map value type differs")
            if spec.label != "single" or spec.oneof:
                problems.append("contract map with label/oneof is unsupported")
        else:
            if is_map:
                problems.append("is a map")
            elif not base_matches(spec, f):
                problems.append("type differs")

        # label / presence
        in_oneof = f.HasField("oneof_index")
        oneof_name = m.oneof_decl[f.oneof_index].name if in_oneof else None
        if spec.label == "repeated" or spec.kind == "map":
            if f.label != FDP.LABEL_REPEATED:
                problems.append("not repeated")
        elif f.label == FDP.LABEL_REPEATED:
            problems.append("is repeated")
        if spec.label == "optional":
            members = [x for x in m.field if x.HasField("oneof_index") and x.oneof_index == f.oneof_index] if in_oneof else []
            ok = in_oneof and oneof_name == "_" + cf.name and len(members) == 1
            if not ok:
                problems.append("optional must be proto3 optional or a one-member oneof named _%s" % cf.name)
        elif spec.oneof:
            if not in_oneof or f.proto3_optional or oneof_name != spec.oneof:
                problems.append("must be a member of oneof %s" % spec.oneof)
        elif in_oneof:
            problems.append("must not be in a oneof (ours: %s)" % oneof_name)

        self.check(not problems, cf.where, "%s: contract %r, ours %r (%s)"
                   % (label, cf.type_text, ours, "; ".join(problems)))

        # wire type column
        if cf.wire:
            if spec.kind == "map" or f.label == FDP.LABEL_REPEATED:
                want = "LEN"
            else:
                want = WIRE_OF_TYPE.get(f.type, "?")
            self.check(cf.wire == want, cf.where,
                       "%s: contract wire %s but our type encodes as %s" % (label, cf.wire, want))

        # secret option
        if cm.check_secret:
            secret = field_is_secret(f)
            self.check(secret == cf.secret, cf.where,
                       "%s: secret option %s, contract %s" % (
                           label, "set" if secret else "not set",
                           "marks it secret" if cf.secret else "does not mark it secret"))

        if spec.deprecated:
            self.check(f.options.deprecated, cf.where, "%s: should be [deprecated = true]" % label)

    # ---- rpcs ----
    def check_rpc(self, rpc):
        m = re.fullmatch(r"/([A-Za-z0-9_.]+)\.([A-Za-z0-9_]+)/([A-Za-z0-9_]+)", rpc.path)
        if not self.check(m is not None, rpc.where, "cannot parse method path %r" % rpc.path):
            return
        pkg, svc_name, meth_name = m.group(1), m.group(2), m.group(3)
        svc = self.index.services.get(pkg + "." + svc_name)
        if not self.check(svc is not None, rpc.where, "service %s.%s missing" % (pkg, svc_name)):
            return
        meth = next((x for x in svc.method if x.name == meth_name), None)
        if not self.check(meth is not None, rpc.where, "method %s missing" % rpc.path):
            return
        problems = []
        if meth.input_type.lstrip(".") != resolve(rpc.req, pkg):
            problems.append("request %s, contract %s" % (meth.input_type.lstrip("."), resolve(rpc.req, pkg)))
        if meth.output_type.lstrip(".") != resolve(rpc.resp, pkg):
            problems.append("response %s, contract %s" % (meth.output_type.lstrip("."), resolve(rpc.resp, pkg)))
        want = STREAMING.get(rpc.streaming)
        if want is None:
            problems.append("unknown streaming kind %r in contract" % rpc.streaming)
        elif (meth.client_streaming, meth.server_streaming) != want:
            problems.append("streaming client=%s server=%s, contract %s"
                            % (meth.client_streaming, meth.server_streaming, rpc.streaming))
        self.check(not problems, rpc.where, "%s: %s" % (rpc.path, "; ".join(problems)))

        rule = method_authorization(meth)
        if rpc.auth is None:
            self.check(rule is None, rpc.where,
                       "%s: carries an authorization option the contract does not list" % rpc.path)
            return
        mode, scope, role = rpc.auth
        want_rule = {"auth_mode": mode, "scope": "", "workspace_role": "", "global_role": ""}
        if scope not in DASHES:
            want_rule["scope"] = scope
        if role not in DASHES:
            parts = role.split()
            if len(parts) == 2 and parts[0] == "global":
                want_rule["global_role"] = parts[1]
            elif len(parts) == 2 and parts[0] == "workspace":
                want_rule["workspace_role"] = parts[1]
            else:
                self.check(False, rpc.where, "%s: cannot parse role column %r" % (rpc.path, role))
        if not self.check(rule is not None, rpc.where, "%s: authorization option missing" % rpc.path):
            return
        diffs = ["%s=%r (contract %r)" % (k, rule[k], want_rule[k])
                 for k in ("auth_mode", "scope", "workspace_role", "global_role")
                 if rule[k] != want_rule[k]]
        self.check(not diffs, rpc.where, "%s: authorization %s" % (rpc.path, ", ".join(diffs)))

    def check_services_complete(self, rpcs):
        """Methods our services declare beyond the contract tables are only
        reported as notes (they cannot break existing clients)."""
        listed = {}
        for rpc in rpcs:
            m = re.fullmatch(r"/([A-Za-z0-9_.]+)/([A-Za-z0-9_]+)", rpc.path)
            if m:
                listed.setdefault(m.group(1), set()).add(m.group(2))
        notes = []
        for svc_full, names in listed.items():
            svc = self.index.services.get(svc_full)
            if svc is None:
                continue
            for meth in svc.method:
                if meth.name not in names:
                    notes.append("note: /%s/%s is not in the contract tables" % (svc_full, meth.name))
        return notes


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

def build_descriptor_set(repo, protoc, include):
    proto_dir = os.path.join(repo, "proto")
    rel = []
    for dirpath, _dirs, files in os.walk(proto_dir):
        for fn in files:
            if fn.endswith(".proto"):
                rel.append(os.path.relpath(os.path.join(dirpath, fn), proto_dir))
    rel.sort()
    if not rel:
        raise RuntimeError("no .proto files under %s" % proto_dir)
    with tempfile.TemporaryDirectory(prefix="protocheck.") as tmp:
        out = os.path.join(tmp, "set.pb")
        cmd = [protoc, "--include_imports", "--descriptor_set_out=" + out,
               "-I" + proto_dir, "-I" + include] + rel
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if proc.returncode != 0:
            raise RuntimeError("protoc failed (%d):\n%s" % (
                proc.returncode, proc.stderr.decode("utf-8", "replace")))
        with open(out, "rb") as fh:
            data = fh.read()
    fds = descriptor_pb2.FileDescriptorSet()
    fds.ParseFromString(data)
    return fds


def main(argv):
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description="check .proto files against the contract fact sheets")
    ap.add_argument("contract_dir", nargs="?", default=None,
                    help="directory holding openshell-v1.md and compute-v1.md")
    ap.add_argument("--repo", default=os.path.dirname(here), help="repository root (default: parent of scripts/)")
    ap.add_argument("--protoc", default="protoc", help="protoc binary")
    ap.add_argument("--include", default="/usr/include", help="directory with google/protobuf/*.proto")
    ap.add_argument("--no-standard", action="store_true",
                    help="skip the built-in grpc.health.v1 / grpc.reflection.v1alpha checks")
    ap.add_argument("-v", "--verbose", action="store_true", help="print notes too")
    args = ap.parse_args(argv)

    repo = os.path.abspath(args.repo)
    contract_dir = args.contract_dir or os.environ.get("OPENSHELL_CONTRACT_DIR") \
        or os.path.join(repo, "..", "shared", "contract")
    contract_dir = os.path.abspath(contract_dir)

    sheets = [("openshell-v1.md", "openshell.v1"), ("compute-v1.md", "openshell.compute.v1")]
    for name, _pkg in sheets:
        if not os.path.isfile(os.path.join(contract_dir, name)):
            sys.stderr.write("check_proto_contract: %s not found in %s\n" % (name, contract_dir))
            return 2

    try:
        fds = build_descriptor_set(repo, args.protoc, args.include)
    except (OSError, RuntimeError) as exc:
        sys.stderr.write("check_proto_contract: %s\n" % exc)
        return 2
    index = Index(fds)

    contract = Contract()
    for name, pkg in sheets:
        parse_contract_file(os.path.join(contract_dir, name), pkg, contract)
    if not args.no_standard:
        add_standard(contract)

    checker = Checker(index, args.verbose)
    for p in contract.problems:
        checker.check(False, "contract", p)
    for fname, pkg, imports, where in contract.files:
        checker.check_file(fname, pkg, imports, where)
    for ce in contract.enums:
        checker.check_enum(ce)
    seen = {}
    for cm in contract.messages:
        if cm.full in seen:
            # The same message may be described twice (never expected).
            checker.check(False, cm.where, "%s described twice in the contract (also %s)"
                          % (cm.full, seen[cm.full]))
            continue
        seen[cm.full] = cm.where
        checker.check_message(cm)
    for rpc in contract.rpcs:
        checker.check_rpc(rpc)
    # Sanity: the parser must have found something in each sheet.
    checker.check(len(contract.rpcs) > 0, "contract", "no RPC rows parsed")
    checker.check(len(contract.messages) > 0, "contract", "no message sections parsed")

    for line in checker.mismatches:
        print(line)
    if args.verbose:
        for note in checker.check_services_complete(contract.rpcs):
            print(note)
        print("parsed: %d files, %d enums, %d messages, %d rpcs" % (
            len(contract.files), len(contract.enums), len(contract.messages), len(contract.rpcs)))
    print("contract check: %d checked, %d mismatches" % (checker.checked, len(checker.mismatches)))
    return 1 if checker.mismatches else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
