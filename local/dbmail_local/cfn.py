"""Reads template.yaml and resolves its intrinsic functions to the local stack's values.

The local stack is built from the template itself, never from a hand-written copy, so a change
to a table, queue, function or environment variable reaches the local stack unchanged.
"""

import copy
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from . import DEFAULT_PARAMETERS, DEFAULT_TEMPLATE

log = logging.getLogger(__name__)

REGION = "us-east-1"
ACCOUNT_ID = "123456789012"  # moto's default account
STACK_NAME = "dbmail"

_SUB_VARIABLE = re.compile(r"\$\{([^}]+)\}")

# The property that, when set, overrides the generated physical name of each resource type.
_NAME_PROPERTY = {
    "AWS::DynamoDB::Table": "TableName",
    "AWS::SQS::Queue": "QueueName",
    "AWS::S3::Bucket": "BucketName",
    "AWS::Logs::LogGroup": "LogGroupName",
    "AWS::Serverless::Function": "FunctionName",
    "AWS::Serverless::LayerVersion": "LayerName",
    "AWS::SNS::Topic": "TopicName",
    "AWS::SES::ConfigurationSet": "Name",
    "AWS::SecretsManager::Secret": "Name",
}
# The intrinsic functions template.yaml uses; any other is refused (TemplateError), never guessed.
_INTRINSICS = frozenset({"Ref", "Fn::GetAtt", "Fn::Sub", "Fn::Join"})


class TemplateError(Exception):
    """The template (or a parameter file) asks for something the local stack cannot give."""


class TemplateLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml's when PyYAML has it
    """SafeLoader that reads CloudFormation short tags (!Ref, !GetAtt, !Sub, !Join) as long form."""


def _construct_intrinsic(loader: TemplateLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {suffix: value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


TemplateLoader.add_multi_constructor("!", _construct_intrinsic)


def load_yaml(path: Path) -> dict[str, Any]:
    """The template's body, parsed once per version of the file (tests load it for each stack)."""
    stat = path.stat()
    return copy.deepcopy(_parsed(path.resolve(), stat.st_mtime_ns, stat.st_size))


@lru_cache(maxsize=8)
def _parsed(path: Path, mtime_ns: int, size: int) -> dict[str, Any]:
    with open(path, encoding="utf-8") as stream:
        return yaml.load(stream, Loader=TemplateLoader)  # a SafeLoader subclass: safe


@dataclass(frozen=True)
class LocalTarget:
    """Where the template's resources live locally.

    ``stream_arn`` looks up a table's latest stream ARN (DynamoDB Local makes one up at table
    creation), so only callers that resolve ``!GetAtt Table.StreamArn`` need to give it.
    ``function_urls`` are the URLs the runner serves the functions with a FunctionUrlConfig on,
    by logical id (stack.env's ``DBMAIL_LOCAL_<LOGICALID>_URL``); a function missing there gets a
    URL of Lambda's form, for callers that only read the template.
    """

    sqs_url: str = "http://127.0.0.1:5000"
    region: str = REGION
    account_id: str = ACCOUNT_ID
    stack_name: str = STACK_NAME
    stream_arn: Callable[[str], str] | None = None
    function_urls: Mapping[str, str] = field(default_factory=dict)


def as_bool(value: Any) -> bool:
    """CloudFormation booleans may come as YAML booleans or as strings from parameters."""
    return value is True or (isinstance(value, str) and value.lower() == "true")


def _is_intrinsic(value: Any) -> bool:
    if not isinstance(value, dict) or len(value) != 1:
        return False
    key = next(iter(value))
    return key == "Ref" or key.startswith("Fn::")


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
    """A parsed template whose parameters and intrinsics resolve to local values.

    Only what template.yaml uses is supported: no Conditions (a template with any is refused),
    and the intrinsics Ref, Fn::GetAtt, Fn::Sub and Fn::Join.
    """

    def __init__(
        self,
        body: dict[str, Any],
        *,
        path: Path,
        parameters: Mapping[str, Any] | None = None,
        target: LocalTarget | None = None,
    ) -> None:
        if "Conditions" in body:
            raise TemplateError(f"{path.name}: Conditions are not supported locally")
        self.body = body
        self.path = path
        self.target = target or LocalTarget()
        self.parameters = self._parameter_values(parameters or {})

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

    # ---- parameters -------------------------------------------------------------------

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

    # ---- resources --------------------------------------------------------------------

    def resources(self, *types: str) -> dict[str, dict[str, Any]]:
        """Resources of the given types (all if none)."""
        return {
            logical_id: resource
            for logical_id, resource in self.body.get("Resources", {}).items()
            if not types or resource["Type"] in types
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
        return name.lower() if kind == "AWS::S3::Bucket" else name

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
        }
        if name in pseudo:
            return pseudo[name]
        kind = self._resource(name)["Type"]
        physical = self.physical_name(name)
        if kind == "AWS::SQS::Queue":
            return self.queue_url(physical)
        if kind == "AWS::Serverless::LayerVersion":
            return self._arn("lambda", f"layer:{physical}:1")
        if kind == "AWS::SecretsManager::Secret":  # a partial ARN (no random suffix): Secrets Manager takes it
            return self._arn("secretsmanager", f"secret:{physical}")
        if kind == "AWS::SNS::Topic":
            return self._arn("sns", physical)
        return physical

    def url_functions(self) -> list[str]:
        """The functions with a FunctionUrlConfig (SAM adds an AWS::Lambda::Url ``<Function>Url`` to each)."""
        return [
            logical_id
            for logical_id, resource in self.resources("AWS::Serverless::Function").items()
            if "FunctionUrlConfig" in resource.get("Properties", {})
        ]

    def function_url(self, logical_id: str) -> str:
        """The function's URL (with Lambda's trailing slash): the runner's, else one of Lambda's form."""
        if logical_id in self.target.function_urls:
            return self.target.function_urls[logical_id]
        url_id = re.sub(r"[^a-z0-9]", "", self.physical_name(logical_id).lower())
        return f"https://{url_id}.lambda-url.{self.target.region}.on.aws/"

    def get_att(self, logical_id: str, attribute: str) -> str:
        function = logical_id.removesuffix("Url")
        if logical_id not in self.body.get("Resources", {}) and function in self.url_functions():
            if attribute != "FunctionUrl":
                raise TemplateError(f"!GetAtt {logical_id}.{attribute} (SAM's function URL) has no local value")
            return self.function_url(function)
        kind = self._resource(logical_id)["Type"]
        name = self.physical_name(logical_id)
        attributes: dict[str, Callable[[], str]] = {}
        if kind == "AWS::SQS::Queue":
            attributes = {"Arn": lambda: self._arn("sqs", name), "QueueName": lambda: name}
        elif kind == "AWS::DynamoDB::Table":
            attributes = {
                "Arn": lambda: self._arn("dynamodb", f"table/{name}"),
                "StreamArn": lambda: self._stream_arn(name),
            }
        elif kind == "AWS::S3::Bucket":
            attributes = {"Arn": lambda: f"arn:aws:s3:::{name}"}
        elif kind == "AWS::Serverless::Function":
            attributes = {"Arn": lambda: self._arn("lambda", f"function:{name}")}
        elif kind == "AWS::SNS::Topic":
            attributes = {"TopicArn": lambda: self._arn("sns", name), "TopicName": lambda: name}
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
            return [self.resolve(item) for item in value]
        if not isinstance(value, dict):
            return value
        if _is_intrinsic(value):
            ((function, argument),) = value.items()
            return self._intrinsic(function, argument)
        return {key: self.resolve(item) for key, item in value.items()}

    def _intrinsic(self, function: str, argument: Any) -> Any:
        if function not in _INTRINSICS:
            raise TemplateError(f"{function} is not supported locally")
        if function == "Ref":
            return self.ref(argument)
        argument = self.resolve(argument)
        if function == "Fn::GetAtt":
            logical_id, attribute = argument if isinstance(argument, list) else argument.split(".", 1)
            return self.get_att(logical_id, attribute)
        if function == "Fn::Sub":
            return self._sub(argument)
        delimiter, items = argument  # Fn::Join
        return delimiter.join(_stringify(item) for item in items)

    def _sub(self, text: str) -> str:
        """``${Name}`` (a parameter, pseudo parameter or resource) and ``${Resource.Attribute}``."""
        if not isinstance(text, str):
            raise TemplateError("Fn::Sub with a variable map is not supported locally")

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
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
        """The union of every function's environment: stack.env's, for the clients (the
        website SDK, the CLI, tests) that use the whole stack. Never a function's: the runner
        gives each function its own ``function_environment``, as Lambda does.

        Where functions disagree on a variable the first one's value is kept and a warning logged.
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
