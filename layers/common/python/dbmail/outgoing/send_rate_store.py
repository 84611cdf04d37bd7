"""The send rate's bucket item in SendRateTable and the SES account's quota: the integration
half of outgoing/send_rate.py (conditional UpdateItems only)."""

from __future__ import annotations

from botocore.exceptions import ClientError


class DynamoBucket:
    """The bucket's item in SendRateTable (hash key ``bucket``): conditional UpdateItems only."""

    def __init__(self, dynamodb, table: str, name: str):
        self._dynamodb = dynamodb
        self._table = table
        self._key = {"bucket": {"S": name}}

    def take(self, cost: float, now: float, ceiling: float, full: bool) -> tuple[bool, float]:
        values = {":now": {"N": _number(now)}}
        if full:  # from now: set outright
            update, condition = "SET full_at = :full_at", "attribute_not_exists(full_at) OR full_at <= :now"
            values[":full_at"] = {"N": _number(now + cost)}
        else:  # add to a bucket that is not full: concurrent takes commute
            update, condition = "SET full_at = full_at + :cost", "full_at > :now AND full_at <= :ceiling"
            values[":cost"] = {"N": _number(cost)}
            values[":ceiling"] = {"N": _number(ceiling - cost)}
        try:
            answer = self._dynamodb.update_item(
                TableName=self._table,
                Key=self._key,
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeValues=values,
                ReturnValues="UPDATED_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            return False, _full_at(exc.response.get("Item"))
        return True, _full_at(answer.get("Attributes"))


def _number(seconds: float) -> str:
    return f"{seconds:.6f}"


def _full_at(item: dict | None) -> float:
    return float(item["full_at"]["N"]) if item and "full_at" in item else 0.0


def ses_quota(sesv2) -> float:
    """The SES account's MaxSendRate (emails per second), from sesv2 GetAccount."""
    return float(sesv2.get_account()["SendQuota"]["MaxSendRate"])
