#!/usr/bin/env python3
"""The engine crate's public API as a sorted listing, one item per line, from rustdoc's JSON.

    python3 scripts/public_api.py target/doc/flashpack.json            # print it
    python3 scripts/public_api.py target/doc/flashpack.json --check F  # fail on any difference from F

Every public path a user can name (re-exports included) with its kind, function and method
signatures, struct fields, enum variants and trait impls. Blanket and auto-trait impls are left
out (they follow from the rest). `make lint` checks it against crates/flashpack/public-api.txt,
so a change of the surface shows up as a diff of that file.
"""
from __future__ import annotations

import json
import sys


def main() -> int:
    doc = json.load(open(sys.argv[1]))
    lines = sorted(set(Lister(doc).walk()))
    text = "".join(line + "\n" for line in lines)
    if len(sys.argv) == 4 and sys.argv[2] == "--check":
        want = open(sys.argv[3]).read()
        if want != text:
            import difflib

            sys.stdout.writelines(
                difflib.unified_diff(
                    want.splitlines(True), text.splitlines(True), sys.argv[3], "now"
                )
            )
            print(
                f"\nThe public API changed: if that is intended, run `make public-api` "
                f"and commit {sys.argv[3]}.",
                file=sys.stderr,
            )
            return 1
        return 0
    sys.stdout.write(text)
    return 0


class Lister:
    def __init__(self, doc: dict) -> None:
        self.index = doc["index"]
        self.root = str(doc["root"])
        self.paths = doc["paths"]

    def item(self, id_) -> dict | None:
        return self.index.get(str(id_))

    def walk(self):
        yield from self.module(self.item(self.root), "flashpack", set())

    def module(self, m: dict, path: str, seen: set):
        if m["id"] in seen:
            return
        seen = seen | {m["id"]}
        for child_id in m["inner"]["module"]["items"]:
            child = self.item(child_id)
            if child is None or child["visibility"] != "public":
                continue
            inner = child["inner"]
            if "use" in inner:
                use = inner["use"]
                target = self.item(use["id"]) if use["id"] is not None else None
                if use["is_glob"]:
                    if target is not None and "module" in target["inner"]:
                        yield from self.module(target, path, seen)
                    continue
                name = use["name"]
                if target is None:
                    yield f"pub use {path}::{name} = {use['source']}"
                    continue
                yield from self.entry(target, f"{path}::{name}", seen)
            else:
                yield from self.entry(child, f"{path}::{child['name']}", seen)

    def entry(self, it: dict, path: str, seen: set):
        kind, inner = next(iter(it["inner"].items()))
        if kind == "module":
            yield f"pub mod {path}"
            yield from self.module(it, path, seen)
        elif kind == "function":
            yield f"pub fn {path}{self.sig(inner)}"
        elif kind == "constant":
            yield f"pub const {path}: {self.ty(inner['type'])}"
        elif kind == "static":
            yield f"pub static {path}: {self.ty(inner['type'])}"
        elif kind == "type_alias":
            yield f"pub type {path}{self.generics(inner['generics'])} = {self.ty(inner['type'])}"
        elif kind == "struct":
            yield f"pub struct {path}{self.generics(inner['generics'])}"
            k = inner["kind"]
            if "plain" in k:
                for f in k["plain"]["fields"]:
                    yield from self.field(f, path)
                if k["plain"]["has_stripped_fields"]:
                    yield f"pub struct {path} (has private fields)"
            elif "tuple" in k:
                fields = ["_" if f is None else self.ty(self.item(f)["inner"]["struct_field"]) for f in k["tuple"]]
                yield f"pub struct {path}({', '.join(fields)})"
            yield from self.impls(inner["impls"], path)
        elif kind == "enum":
            yield f"pub enum {path}{self.generics(inner['generics'])}"
            for v in inner["variants"]:
                yield from self.variant(self.item(v), path)
            yield from self.impls(inner["impls"], path)
        elif kind == "trait":
            yield f"pub trait {path}"
            for i in inner["items"]:
                m = self.item(i)
                if m and "function" in m["inner"]:
                    yield f"pub fn {path}::{m['name']}{self.sig(m['inner']['function'])}"
        elif kind == "macro":
            yield f"pub macro {path}!"
        else:
            yield f"pub {kind} {path}"

    def field(self, f_id, owner: str):
        f = self.item(f_id)
        if f is not None and f["visibility"] == "public":
            yield f"pub {owner}::{f['name']}: {self.ty(f['inner']['struct_field'])}"

    def variant(self, v: dict, owner: str):
        kind = v["inner"]["variant"]["kind"]
        name = f"{owner}::{v['name']}"
        if kind == "plain":
            yield f"pub variant {name}"
        elif "tuple" in kind:
            fields = ["_" if f is None else self.ty(self.item(f)["inner"]["struct_field"]) for f in kind["tuple"]]
            yield f"pub variant {name}({', '.join(fields)})"
        else:
            yield f"pub variant {name} {{ .. }}"
            for f in kind["struct"]["fields"]:
                fi = self.item(f)
                yield f"pub {name}::{fi['name']}: {self.ty(fi['inner']['struct_field'])}"

    def impls(self, ids, owner: str):
        for i in ids:
            imp = self.item(i)["inner"]["impl"]
            if imp["is_synthetic"] or imp["blanket_impl"] is not None:
                continue
            if imp["trait"] is not None:
                yield f"impl {self.path_ty(imp['trait'])} for {owner}"
                continue
            for m_id in imp["items"]:
                m = self.item(m_id)
                if m is None or m["visibility"] != "public":
                    continue
                if "function" in m["inner"]:
                    yield f"pub fn {owner}::{m['name']}{self.sig(m['inner']['function'])}"
                elif "assoc_const" in m["inner"]:
                    yield f"pub const {owner}::{m['name']}: {self.ty(m['inner']['assoc_const']['type'])}"

    def sig(self, f: dict) -> str:
        s = f["sig"]
        args = []
        for name, t in s["inputs"]:
            if name == "self":
                args.append(self.self_arg(t))
            else:
                args.append(f"{name}: {self.ty(t)}")
        out = f" -> {self.ty(s['output'])}" if s["output"] is not None else ""
        head = "unsafe " if f["header"]["is_unsafe"] else ""
        return f"{self.generics(f['generics'])}({', '.join(args)}){out}" + (f" [{head.strip()}]" if head else "")

    def self_arg(self, t: dict) -> str:
        if t == {"generic": "Self"}:
            return "self"
        if "borrowed_ref" in t and t["borrowed_ref"]["type"] == {"generic": "Self"}:
            return "&mut self" if t["borrowed_ref"]["is_mutable"] else "&self"
        return f"self: {self.ty(t)}"

    def generics(self, g: dict) -> str:
        params = []
        for p in g["params"]:
            k = p["kind"]
            if "lifetime" in k:
                params.append(p["name"])
            elif "type" in k:
                if k["type"].get("is_synthetic"):
                    continue
                bounds = " + ".join(self.bound(b) for b in k["type"]["bounds"])
                params.append(p["name"] + (f": {bounds}" if bounds else ""))
            elif "const" in k:
                params.append(f"const {p['name']}: {self.ty(k['const']['type'])}")
        return f"<{', '.join(params)}>" if params else ""

    def bound(self, b: dict) -> str:
        if "trait_bound" in b:
            return self.path_ty(b["trait_bound"]["trait"])
        if "outlives" in b:
            return b["outlives"]
        return "?"

    def path_ty(self, p: dict) -> str:
        name = p["path"]
        args = p.get("args")
        if args and "angle_bracketed" in args:
            parts = []
            for a in args["angle_bracketed"]["args"]:
                if "type" in a:
                    parts.append(self.ty(a["type"]))
                elif "lifetime" in a:
                    parts.append(a["lifetime"])
                elif "const" in a:
                    parts.append(str(a["const"].get("expr", "_")))
            for c in args["angle_bracketed"].get("constraints", []):
                binding = c.get("binding", {})
                if "equality" in binding and "type" in binding["equality"]:
                    parts.append(f"{c['name']} = {self.ty(binding['equality']['type'])}")
            if parts:
                name += f"<{', '.join(parts)}>"
        elif args and "parenthesized" in args:
            pa = args["parenthesized"]
            out = f" -> {self.ty(pa['output'])}" if pa.get("output") else ""
            name += f"({', '.join(self.ty(t) for t in pa['inputs'])}){out}"
        return name

    def ty(self, t) -> str:
        if t is None:
            return "()"
        (kind, v), = t.items()
        if kind == "resolved_path":
            return self.path_ty(v)
        if kind == "primitive":
            return v
        if kind == "generic":
            return v
        if kind == "borrowed_ref":
            lt = f"{v['lifetime']} " if v["lifetime"] else ""
            return f"&{lt}{'mut ' if v['is_mutable'] else ''}{self.ty(v['type'])}"
        if kind == "raw_pointer":
            return f"*{'mut' if v['is_mutable'] else 'const'} {self.ty(v['type'])}"
        if kind == "slice":
            return f"[{self.ty(v)}]"
        if kind == "array":
            return f"[{self.ty(v['type'])}; {v['len']}]"
        if kind == "tuple":
            return f"({', '.join(self.ty(x) for x in v)})"
        if kind == "impl_trait":
            return "impl " + " + ".join(self.bound(b) for b in v)
        if kind == "dyn_trait":
            return "dyn " + " + ".join(self.path_ty(p["trait"]) for p in v["traits"])
        if kind == "qualified_path":
            return f"<{self.ty(v['self_type'])}>::{v['name']}"
        if kind == "function_pointer":
            return "fn(..)"
        return kind


if __name__ == "__main__":
    sys.exit(main())
