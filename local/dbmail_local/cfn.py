"""Reads template.yaml and resolves its intrinsic functions to the local stack's values.

The local stack is built from the template itself, never from a hand-written copy, so a change
to a table, queue, function or environment variable reaches the local stack unchanged.
"""

import base64
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import DEFAULT_PARAMETERS, DEFAULT_TEMPLATE

log = logging.getLogger(__name__)

REGION = "us-east-1"
ACCOUNT_ID = "123456789012"  # moto's default account
STACK_NAME = "dbmail"

_NO_VALUE = object()  # what !Ref AWS::NoValue resolves to: the enclosing key or item is dropped
_SUB_VARIABLE = re.compile(r"\$\{([^}]+)\}")

# The property that, when set, overrides the generated physical name of each resource type.
_NAME_PROPERTY = {
    "AWS::DynamoDB::Table": "TableName",
    "AWS::SQS::Queue": "QueueName",
    "AWS::S3::Bucket": "BucketName",
    "AWS::SNS::Topic": "TopicName",
    "AWS::Logs::LogGroup": "LogGroupName",
    "AWS::Serverless::Function": "FunctionName",
    "AWS::Lambda::Function": "FunctionName",
    "AWS::Serverless::LayerVersion": "LayerName",
}


class TemplateError(Exception):
    """The template (or a parameter file) asks for something the local stack cannot give."""


class TemplateLoader(yaml.SafeLoader):
    """SafeLoader that reads CloudFormation short tags (!Ref, !GetAtt, !Sub, ...) as long form."""


def _construct_intrinsic(loader: TemplateLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix in ("Ref", "Condition"):
        return {suffix: value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


TemplateLoader.add_multi_constructor("!", _construct_intrinsic)


def load_yaml(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as stream:
        return yaml.load(stream, Loader=TemplateLoader)  # a SafeLoader subclass: safe


@dataclass(frozen=True)
class LocalTarget:
    """Where the template's resources live locally.

    ``stream_arn`` looks up a table's latest stream ARN (DynamoDB Local makes one up at table
    creation), so only callers that resolve ``!GetAtt Table.StreamArn`` need to give it.
    """

    sqs_url: str = "http://127.0.0.1:5000"
    region: str = REGION
    account_id: str = ACCOUNT_ID
    stack_name: str = STACK_NAME
    stream_arn: Callable[[str], str] | None = None


def as_bool(value: Any) -> bool:
    """CloudFormation booleans may come as YAML booleans or as strings from parameters."""
    return value is True or (isinstance(value, str) and value.lower() == "true")


def _is_intrinsic(value: Any) -> bool:
    if not isinstance(value, dict) or len(value) != 1:
        return False
    key = next(iter(value))
    return key in ("Ref", "Condition") or key.startswith("Fn::")


def _merge_globals(defaults: Any, own: Any) -> Any:
    """SAM's Globals rules: maps merge, lists concatenate, the function's own scalar wins."""
    if isinstance(defaults, dict) and isinstance(own, dict) and not (_is_intrinsic(defaults) or _is_intrinsic(own)):
        merged = dict(defaults)
        for key, value in own.items():
            merged[key] = _merge_globals(defaults[key], value) if key in defaults else value
        return merged
    if isinstance(defaults, list) and isinstance(own, list):
        return defaults + own
    return own


def _stringify(value: Any) -> str:
    """Environment variables and SQS attributes are strings; CloudFormation writes bools lowercase."""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


class Template:
    """A parsed template whose parameters, conditions and intrinsics resolve to local values."""

    def __init__(
        self,
        body: dict[str, Any],
        *,
        path: Path,
        parameters: Mapping[str, Any] | None = None,
        target: LocalTarget | None = None,
    ) -> None:
        self.body = body
        self.path = path
        self.target = target or LocalTarget()
        self.parameters = self._parameter_values(parameters or {})
        self._conditions: dict[str, bool] = {}

    @classmethod
    def load(
        cls,
        path: Path = DEFAULT_TEMPLATE,
        parameter_file: Path | None = DEFAULT_PARAMETERS,
        target: LocalTarget | None = None,
    ) -> "Template":
        """Reads a template and a flat ``{"Name": "value"}`` parameter file (None: defaults only)."""
        overrides = json.loads(Path(parameter_file).read_text(encoding="utf-8")) if parameter_file else {}
        if not isinstance(overrides, dict):
            raise TemplateError(f"{parameter_file}: expected a JSON object of parameter values")
        return cls(load_yaml(Path(path)), path=Path(path), parameters=overrides, target=target)

    @property
    def base_dir(self) -> Path:
        return self.path.resolve().parent

    # ---- parameters and conditions ----------------------------------------------------

    def _parameter_values(self, overrides: Mapping[str, Any]) -> dict[str, str | list[str]]:
        declared: dict[str, dict[str, Any]] = self.body.get("Parameters", {})
        unknown = sorted(set(overrides) - set(declared))
        if unknown:
            raise TemplateError(f"parameters not declared in {self.path.name}: {', '.join(unknown)}")
        values: dict[str, str | list[str]] = {}
        for name, declaration in declared.items():
            if name in overrides:
                raw = _stringify(overrides[name])
            elif "Default" in declaration:
                raw = _stringify(declaration["Default"])
            else:
                raise TemplateError(f"parameter {name} has no default: give it a value in the parameter file")
            allowed = [_stringify(value) for value in declaration.get("AllowedValues", [])]
            if allowed and raw not in allowed:
                raise TemplateError(f"parameter {name}={raw!r} is not one of {allowed}")
            kind = declaration.get("Type", "String")
            if kind == "CommaDelimitedList" or kind.startswith("List<"):
                values[name] = [item.strip() for item in raw.split(",")] if raw else []
            else:
                values[name] = raw
        return values

    def condition(self, name: str) -> bool:
        if name not in self._conditions:
            try:
                expression = self.body["Conditions"][name]
            except KeyError:
                raise TemplateError(f"unknown condition {name}") from None
            self._conditions[name] = self._evaluate(expression)
        return self._conditions[name]

    def _evaluate(self, expression: Any) -> bool:
        ((function, argument),) = expression.items()
        if function == "Condition":
            return self.condition(argument)
        if function == "Fn::Equals":
            left, right = (self.resolve(item) for item in argument)
            return _stringify(left) == _stringify(right)
        if function == "Fn::Not":
            return not self._evaluate(argument[0])
        if function == "Fn::And":
            return all(self._evaluate(item) for item in argument)
        if function == "Fn::Or":
            return any(self._evaluate(item) for item in argument)
        raise TemplateError(f"unsupported condition function {function}")

    # ---- resources --------------------------------------------------------------------

    def resources(self, *types: str) -> dict[str, dict[str, Any]]:
        """Resources of the given types (all if none) whose Condition, if any, holds locally."""
        return {
            logical_id: resource
            for logical_id, resource in self.body.get("Resources", {}).items()
            if (not types or resource["Type"] in types)
            and ("Condition" not in resource or self.condition(resource["Condition"]))
        }

    def _resource(self, logical_id: str) -> dict[str, Any]:
        try:
            return self.body["Resources"][logical_id]
        except KeyError:
            raise TemplateError(f"no resource {logical_id} in {self.path.name}") from None

    def properties(self, logical_id: str) -> dict[str, Any]:
        """A resource's unresolved Properties; a function's include Globals.Function."""
        resource = self._resource(logical_id)
        own = resource.get("Properties", {})
        if resource["Type"] == "AWS::Serverless::Function":
            return _merge_globals(self.body.get("Globals", {}).get("Function", {}), own)
        return own

    def physical_name(self, logical_id: str) -> str:
        """The resource's local name: its explicit name property, else ``<stack>-<LogicalId>``."""
        resource = self._resource(logical_id)
        kind = resource["Type"]
        properties = resource.get("Properties", {})
        explicit = properties.get(_NAME_PROPERTY.get(kind, ""))
        if explicit is not None:
            return _stringify(self.resolve(explicit))
        name = f"{self.target.stack_name}-{logical_id}"
        if kind == "AWS::S3::Bucket":
            return name.lower()
        if kind == "AWS::SQS::Queue" and as_bool(self.resolve(properties.get("FifoQueue", False))):
            return f"{name}.fifo"
        return name

    def _arn(self, service: str, resource: str) -> str:
        return f"arn:aws:{service}:{self.target.region}:{self.target.account_id}:{resource}"

    def queue_url(self, name: str) -> str:
        return f"{self.target.sqs_url.rstrip('/')}/{self.target.account_id}/{name}"

    def ref(self, name: str) -> Any:
        if name in self.parameters:
            return self.parameters[name]
        pseudo = {
            "AWS::Region": self.target.region,
            "AWS::AccountId": self.target.account_id,
            "AWS::Partition": "aws",
            "AWS::StackName": self.target.stack_name,
            "AWS::StackId": self._arn("cloudformation", f"stack/{self.target.stack_name}/local"),
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::NotificationARNs": [],
            "AWS::NoValue": _NO_VALUE,
        }
        if name in pseudo:
            return pseudo[name]
        kind = self._resource(name)["Type"]
        physical = self.physical_name(name)
        if kind == "AWS::SQS::Queue":
            return self.queue_url(physical)
        if kind == "AWS::SNS::Topic":
            return self._arn("sns", physical)
        if kind == "AWS::Serverless::LayerVersion":
            return self._arn("lambda", f"layer:{physical}:1")
        return physical

    def get_att(self, logical_id: str, attribute: str) -> str:
        kind = self._resource(logical_id)["Type"]
        name = self.physical_name(logical_id)
        attributes: dict[str, Callable[[], str]] = {}
        if kind == "AWS::SQS::Queue":
            attributes = {
                "Arn": lambda: self._arn("sqs", name),
                "QueueName": lambda: name,
                "QueueUrl": lambda: self.queue_url(name),
            }
        elif kind == "AWS::DynamoDB::Table":
            attributes = {
                "Arn": lambda: self._arn("dynamodb", f"table/{name}"),
                "StreamArn": lambda: self._stream_arn(name),
            }
        elif kind == "AWS::S3::Bucket":
            attributes = {
                "Arn": lambda: f"arn:aws:s3:::{name}",
                "DomainName": lambda: f"{name}.s3.amazonaws.com",
                "RegionalDomainName": lambda: f"{name}.s3.{self.target.region}.amazonaws.com",
            }
        elif kind in ("AWS::Serverless::Function", "AWS::Lambda::Function"):
            attributes = {"Arn": lambda: self._arn("lambda", f"function:{name}")}
        elif kind == "AWS::SNS::Topic":
            attributes = {"TopicArn": lambda: self._arn("sns", name), "TopicName": lambda: name}
        elif kind == "AWS::Logs::LogGroup":
            attributes = {"Arn": lambda: self._arn("logs", f"log-group:{name}:*")}
        if attribute not in attributes:
            raise TemplateError(f"!GetAtt {logical_id}.{attribute} ({kind}) has no local value")
        return attributes[attribute]()

    def _stream_arn(self, table_name: str) -> str:
        if self.target.stream_arn is None:
            raise TemplateError(f"the stream ARN of {table_name} needs a running DynamoDB Local")
        return self.target.stream_arn(table_name)

    # ---- intrinsic functions ----------------------------------------------------------

    def resolve(self, value: Any) -> Any:
        """Resolves every intrinsic function inside ``value`` (a template fragment)."""
        if isinstance(value, list):
            items = [self.resolve(item) for item in value]
            return [item for item in items if item is not _NO_VALUE]
        if not isinstance(value, dict):
            return value
        if _is_intrinsic(value):
            ((function, argument),) = value.items()
            return self._intrinsic(function, argument)
        resolved = {key: self.resolve(item) for key, item in value.items()}
        return {key: item for key, item in resolved.items() if item is not _NO_VALUE}

    def _intrinsic(self, function: str, argument: Any) -> Any:
        if function == "Ref":
            return self.ref(argument)
        if function == "Condition":
            return self.condition(argument)
        if function == "Fn::If":
            name, when_true, when_false = argument
            return self.resolve(when_true if self.condition(name) else when_false)
        if function in ("Fn::Equals", "Fn::And", "Fn::Or", "Fn::Not"):
            return self._evaluate({function: argument})
        argument = self.resolve(argument)
        if function == "Fn::GetAtt":
            logical_id, attribute = argument if isinstance(argument, list) else argument.split(".", 1)
            return self.get_att(logical_id, attribute)
        if function == "Fn::Sub":
            return self._sub(argument)
        if function == "Fn::Join":
            delimiter, items = argument
            return delimiter.join(_stringify(item) for item in items)
        if function == "Fn::Select":
            index, items = argument
            return items[int(index)]
        if function == "Fn::Split":
            delimiter, text = argument
            return text.split(delimiter)
        if function == "Fn::Base64":
            return base64.b64encode(argument.encode()).decode()
        if function == "Fn::FindInMap":
            mapping, top, second = argument
            return self.body["Mappings"][mapping][top][second]
        if function == "Fn::GetAZs":
            return [f"{self.target.region}{zone}" for zone in "abc"]
        if function == "Fn::ToJsonString":
            return json.dumps(argument, separators=(",", ":"))
        raise TemplateError(f"{function} is not supported locally")

    def _sub(self, argument: str | list[Any]) -> str:
        text, variables = (argument, {}) if isinstance(argument, str) else (argument[0], argument[1])

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in variables:
                return _stringify(variables[name])
            logical_id, _, attribute = name.partition(".")
            if attribute and logical_id in self.body.get("Resources", {}):
                return self.get_att(logical_id, attribute)
            return _stringify(self.ref(name))

        return _SUB_VARIABLE.sub(substitute, text)

    # ---- functions --------------------------------------------------------------------

    def function_environment(self, logical_id: str) -> dict[str, str]:
        """The function's Environment.Variables (with Globals), resolved to local strings."""
        variables = self.properties(logical_id).get("Environment", {}).get("Variables", {})
        return {name: _stringify(value) for name, value in self.resolve(variables).items()}

    def environment(self) -> dict[str, str]:
        """The union of every function's environment, for the one process that runs them all.

        Where functions disagree on a variable the first one's value is kept and a warning
        logged; the runner still gives each function its own values while it imports it.
        """
        union: dict[str, str] = {}
        for logical_id in self.resources("AWS::Serverless::Function"):
            for name, value in self.function_environment(logical_id).items():
                if union.setdefault(name, value) != value:
                    log.warning(
                        "functions disagree on an environment variable; the shared environment keeps the first value",
                        extra={"variable": name, "function": logical_id},
                    )
        return union
