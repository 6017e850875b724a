//! Numeric replies: the ones the door sends by name, and the core's refusals as the numerics IRC has for
//! them.

use chat_engine::EngineError;

pub(crate) const RPL_WELCOME: &str = "001";
pub(crate) const RPL_YOURHOST: &str = "002";
pub(crate) const RPL_CREATED: &str = "003";
pub(crate) const RPL_MYINFO: &str = "004";
pub(crate) const RPL_ISUPPORT: &str = "005";
pub(crate) const RPL_UMODEIS: &str = "221";
pub(crate) const RPL_LUSERCLIENT: &str = "251";
pub(crate) const RPL_LUSEROP: &str = "252";
pub(crate) const RPL_LUSERCHANNELS: &str = "254";
pub(crate) const RPL_LUSERME: &str = "255";
pub(crate) const RPL_LOCALUSERS: &str = "265";
pub(crate) const RPL_GLOBALUSERS: &str = "266";
pub(crate) const RPL_AWAY: &str = "301";
pub(crate) const RPL_USERHOST: &str = "302";
pub(crate) const RPL_ISON: &str = "303";
pub(crate) const RPL_UNAWAY: &str = "305";
pub(crate) const RPL_NOWAWAY: &str = "306";
pub(crate) const RPL_WHOISUSER: &str = "311";
pub(crate) const RPL_WHOISSERVER: &str = "312";
pub(crate) const RPL_WHOISOPERATOR: &str = "313";
pub(crate) const RPL_ENDOFWHO: &str = "315";
pub(crate) const RPL_WHOISIDLE: &str = "317";
pub(crate) const RPL_ENDOFWHOIS: &str = "318";
pub(crate) const RPL_WHOISCHANNELS: &str = "319";
pub(crate) const RPL_LISTSTART: &str = "321";
pub(crate) const RPL_LIST: &str = "322";
pub(crate) const RPL_LISTEND: &str = "323";
pub(crate) const RPL_CHANNELMODEIS: &str = "324";
pub(crate) const RPL_CREATIONTIME: &str = "329";
pub(crate) const RPL_WHOISACCOUNT: &str = "330";
pub(crate) const RPL_NOTOPIC: &str = "331";
pub(crate) const RPL_TOPIC: &str = "332";
pub(crate) const RPL_TOPICWHOTIME: &str = "333";
pub(crate) const RPL_INVITING: &str = "341";
pub(crate) const RPL_VERSION: &str = "351";
pub(crate) const RPL_WHOREPLY: &str = "352";
pub(crate) const RPL_NAMREPLY: &str = "353";
pub(crate) const RPL_ENDOFNAMES: &str = "366";
pub(crate) const RPL_BANLIST: &str = "367";
pub(crate) const RPL_ENDOFBANLIST: &str = "368";
pub(crate) const RPL_MOTD: &str = "372";
pub(crate) const RPL_MOTDSTART: &str = "375";
pub(crate) const RPL_ENDOFMOTD: &str = "376";
pub(crate) const RPL_TIME: &str = "391";
pub(crate) const ERR_NOSUCHNICK: &str = "401";
pub(crate) const ERR_NOSUCHCHANNEL: &str = "403";
pub(crate) const ERR_NORECIPIENT: &str = "411";
pub(crate) const ERR_NOTEXTTOSEND: &str = "412";
pub(crate) const ERR_INPUTTOOLONG: &str = "417";
pub(crate) const ERR_UNKNOWNCOMMAND: &str = "421";
pub(crate) const ERR_NOMOTD: &str = "422";
pub(crate) const ERR_NONICKNAMEGIVEN: &str = "431";
pub(crate) const ERR_ERRONEUSNICKNAME: &str = "432";
pub(crate) const ERR_NICKNAMEINUSE: &str = "433";
pub(crate) const ERR_NOTREGISTERED: &str = "451";
pub(crate) const ERR_NEEDMOREPARAMS: &str = "461";
pub(crate) const ERR_ALREADYREGISTERED: &str = "462";
pub(crate) const ERR_PASSWDMISMATCH: &str = "464";
pub(crate) const ERR_UMODEUNKNOWNFLAG: &str = "501";
pub(crate) const ERR_USERSDONTMATCH: &str = "502";
pub(crate) const RPL_LOGGEDIN: &str = "900";
pub(crate) const RPL_SASLSUCCESS: &str = "903";
pub(crate) const ERR_SASLFAIL: &str = "904";
pub(crate) const ERR_SASLTOOLONG: &str = "905";
pub(crate) const ERR_SASLABORTED: &str = "906";
pub(crate) const ERR_SASLALREADY: &str = "907";
pub(crate) const RPL_SASLMECHS: &str = "908";

/// A refusal as IRC shows it: a numeric (or `NOTICE` when IRC has none) and its text.
pub(crate) fn refusal(error: &EngineError) -> (String, String) {
    match error {
        EngineError::Refused(e) => match e.irc_numeric() {
            Some(n) => (format!("{n:03}"), e.to_string()),
            None => ("NOTICE".into(), e.to_string()),
        },
        EngineError::RateLimited { retry_after, .. } => (
            "NOTICE".into(),
            format!(
                "You are sending too fast: try again in {} ms",
                retry_after.as_millis()
            ),
        ),
        EngineError::InvalidCredentials => (ERR_PASSWDMISMATCH.into(), "Password incorrect".into()),
        other => ("NOTICE".into(), other.to_string()),
    }
}
