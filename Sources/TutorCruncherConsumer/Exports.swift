// A consumer imports one module and gets the typed events, actions and broker configuration types.
@_exported import struct AMQPClient.AMQPBackoff
@_exported import struct AMQPClient.AMQPConnectionConfiguration
@_exported import struct AMQPClient.AMQPError
@_exported import enum AMQPClient.AMQPHeaderValue
@_exported import struct TutorCruncher.TutorCruncherAction
@_exported import struct TutorCruncher.SubjectType
@_exported import enum TutorCruncher.JSONValue
@_exported import TutorCruncherEvents
