from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Feedback(_message.Message):
    __slots__ = ("feedback_id", "true_class", "true_label")
    FEEDBACK_ID_FIELD_NUMBER: _ClassVar[int]
    TRUE_CLASS_FIELD_NUMBER: _ClassVar[int]
    TRUE_LABEL_FIELD_NUMBER: _ClassVar[int]
    feedback_id: str
    true_class: int
    true_label: str
    def __init__(self, feedback_id: _Optional[str] = ..., true_class: _Optional[int] = ..., true_label: _Optional[str] = ...) -> None: ...

class SendFeedbackRequest(_message.Message):
    __slots__ = ("feedback",)
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    feedback: _containers.RepeatedCompositeFieldContainer[Feedback]
    def __init__(self, feedback: _Optional[_Iterable[_Union[Feedback, _Mapping]]] = ...) -> None: ...

class FeedbackResult(_message.Message):
    __slots__ = ("feedback_id", "accepted", "reason", "message")
    FEEDBACK_ID_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    feedback_id: str
    accepted: bool
    reason: str
    message: str
    def __init__(self, feedback_id: _Optional[str] = ..., accepted: _Optional[bool] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class SendFeedbackResponse(_message.Message):
    __slots__ = ("results", "accepted")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[FeedbackResult]
    accepted: int
    def __init__(self, results: _Optional[_Iterable[_Union[FeedbackResult, _Mapping]]] = ..., accepted: _Optional[int] = ...) -> None: ...

class ABStatusRequest(_message.Message):
    __slots__ = ("experiment",)
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    experiment: str
    def __init__(self, experiment: _Optional[str] = ...) -> None: ...

class VariantStatus(_message.Message):
    __slots__ = ("variant", "version", "label", "requests", "errors", "feedback", "correct", "accuracy", "accuracy_low", "accuracy_high", "latency_p99_seconds")
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_LOW_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_HIGH_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P99_SECONDS_FIELD_NUMBER: _ClassVar[int]
    variant: str
    version: int
    label: str
    requests: int
    errors: int
    feedback: int
    correct: int
    accuracy: float
    accuracy_low: float
    accuracy_high: float
    latency_p99_seconds: float
    def __init__(self, variant: _Optional[str] = ..., version: _Optional[int] = ..., label: _Optional[str] = ..., requests: _Optional[int] = ..., errors: _Optional[int] = ..., feedback: _Optional[int] = ..., correct: _Optional[int] = ..., accuracy: _Optional[float] = ..., accuracy_low: _Optional[float] = ..., accuracy_high: _Optional[float] = ..., latency_p99_seconds: _Optional[float] = ...) -> None: ...

class ExperimentStatus(_message.Message):
    __slots__ = ("name", "model", "mode", "state", "reason", "candidate_share", "step", "baseline", "candidate", "sequential_p_value", "srm_p_value", "shadow")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_SHARE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    SEQUENTIAL_P_VALUE_FIELD_NUMBER: _ClassVar[int]
    SRM_P_VALUE_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: str
    mode: str
    state: str
    reason: str
    candidate_share: float
    step: int
    baseline: VariantStatus
    candidate: VariantStatus
    sequential_p_value: float
    srm_p_value: float
    shadow: ShadowStatus
    def __init__(self, name: _Optional[str] = ..., model: _Optional[str] = ..., mode: _Optional[str] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., candidate_share: _Optional[float] = ..., step: _Optional[int] = ..., baseline: _Optional[_Union[VariantStatus, _Mapping]] = ..., candidate: _Optional[_Union[VariantStatus, _Mapping]] = ..., sequential_p_value: _Optional[float] = ..., srm_p_value: _Optional[float] = ..., shadow: _Optional[_Union[ShadowStatus, _Mapping]] = ...) -> None: ...

class ShadowStatus(_message.Message):
    __slots__ = ("mirrored", "dropped", "agreement", "mean_confidence_difference", "explained", "mean_map_correlation", "mean_top_region_overlap")
    MIRRORED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    MEAN_CONFIDENCE_DIFFERENCE_FIELD_NUMBER: _ClassVar[int]
    EXPLAINED_FIELD_NUMBER: _ClassVar[int]
    MEAN_MAP_CORRELATION_FIELD_NUMBER: _ClassVar[int]
    MEAN_TOP_REGION_OVERLAP_FIELD_NUMBER: _ClassVar[int]
    mirrored: int
    dropped: int
    agreement: float
    mean_confidence_difference: float
    explained: int
    mean_map_correlation: float
    mean_top_region_overlap: float
    def __init__(self, mirrored: _Optional[int] = ..., dropped: _Optional[int] = ..., agreement: _Optional[float] = ..., mean_confidence_difference: _Optional[float] = ..., explained: _Optional[int] = ..., mean_map_correlation: _Optional[float] = ..., mean_top_region_overlap: _Optional[float] = ...) -> None: ...

class ABStatusResponse(_message.Message):
    __slots__ = ("experiments",)
    EXPERIMENTS_FIELD_NUMBER: _ClassVar[int]
    experiments: _containers.RepeatedCompositeFieldContainer[ExperimentStatus]
    def __init__(self, experiments: _Optional[_Iterable[_Union[ExperimentStatus, _Mapping]]] = ...) -> None: ...

class SetWeightRequest(_message.Message):
    __slots__ = ("experiment", "candidate_share", "reason")
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_SHARE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    experiment: str
    candidate_share: float
    reason: str
    def __init__(self, experiment: _Optional[str] = ..., candidate_share: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class EndRequest(_message.Message):
    __slots__ = ("experiment", "reason")
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    experiment: str
    reason: str
    def __init__(self, experiment: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...
