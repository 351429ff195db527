// Runs every vector of roomd/client/e2ee_vectors.json through the page's window.roomdE2EE
// and returns what the page computed, section by section (test_demo_page.py compares).
async (V) => {
  const E = window.roomdE2EE, h = E.fromHex, x = E.hex;
  const each = (list, f) => Promise.all(list.map(f));
  const out = {};
  out.lp = await each(V.lp, async (v) => x(E.lp(h(v.x))));
  out.wrapKey = await each(V.wrapKey, async (v) => x(await E.wrapKey(h(v.ikm), v.roomId, v.info)));
  out.ad = await each(V.ad, async (v) => x(E.ad(v.roomId, v.epoch)));
  out.sealedRoomKey = await each(V.sealedRoomKey, async (v) => {
    const sealed = await E.sealRoomKey(h(v.inviteSecret), v.roomId, v.keyEpoch, h(v.roomKey), h(v.nonce));
    const opened = await E.openRoomKey(h(v.inviteSecret), v.roomId, v.keyEpoch, h(v.out));
    return { out: x(sealed), roomKey: x(opened) };
  });
  out.keyDelivery = await each(V.keyDelivery, async (v) => {
    const shared = await E.sharedSecret(h(v.senderPrivate), h(v.recipientPublic));
    const sharedBack = await E.sharedSecret(h(v.recipientPrivate), h(v.senderPublic));
    const payload = await E.deliverKey(h(v.senderPrivate), h(v.senderPublic), h(v.recipientPublic),
                                       v.roomId, v.epoch, h(v.roomKey), h(v.nonce));
    const opened = await E.openDelivery(h(v.recipientPrivate), v.roomId, h(v.out));
    return {
      sharedSecret: x(shared), sharedBack: x(sharedBack),
      wrapKey: x(await E.wrapKey(shared, v.roomId, "roomd-e2ee-v1 key-wrap")),
      out: x(payload),
      opened: { epoch: opened.epoch, senderPublic: x(opened.senderPublic), roomKey: x(opened.roomKey) },
    };
  });
  out.knock = await each(V.knock, async (v) => ({
    knockKey: x(await E.wrapKey(h(v.inviteSecret), v.roomId, "roomd-e2ee-v1 knock")),
    out: x(await E.knock(h(v.inviteSecret), v.roomId, v.aid, h(v.devicePublic), v.nextEpoch)),
    nextEpoch: E.readKnock(h(v.out)).nextEpoch,
    matches: await E.knockMatches(h(v.inviteSecret), v.roomId, v.aid, h(v.devicePublic), h(v.out)),
  }));
  const message = async (v, body) => {
    const plaintext = E.encodeBody(body);
    const sent = await E.encryptMessage(h(v.roomKey), v.roomId, v.from, v.keyEpoch, plaintext, h(v.iv));
    const opened = await E.decryptMessage(h(v.roomKey), v.roomId, v.from, v.keyEpoch, h(v.iv), h(v.out));
    return { plaintext: x(plaintext), iv: x(sent.iv), out: x(sent.ciphertext), decoded: E.decodeBody(opened) };
  };
  out.message = await each(V.message, (v) => message(v, { text: v.text, sentAt: v.sentAt }));
  out.reaction = await each(V.reaction, (v) => message(v, {
    reaction: { messageId: v.messageId, emoji: v.emoji, remove: v.remove }, sentAt: v.sentAt,
  }));
  out.invite = await each(V.invite, async (v) => {
    const parsed = E.parseInvite(v.link);
    return {
      link: E.inviteLink(v.base, v.roomId, h(v.secret)),
      parsed: { url: parsed.url, roomId: parsed.roomId, secret: x(parsed.secret) },
    };
  });
  out.refused = await each(V.refused, async (v) => {
    try {
      if (v.what === "sealedRoomKey") await E.openRoomKey(h(v.inviteSecret), v.roomId, v.keyEpoch, h(v.blob));
      else if (v.what === "keyDelivery") await E.openDelivery(h(v.recipientPrivate), v.roomId, h(v.blob));
      else if (v.what === "message") await E.decryptMessage(h(v.roomKey), v.roomId, v.from, v.keyEpoch, h(v.iv), h(v.blob));
      else if (v.what === "knock") {
        const matches = await E.knockMatches(h(v.inviteSecret), v.roomId, v.aid, h(v.devicePublic), h(v.blob));
        return matches ? "accepted" : "no match";
      } else return `unknown kind ${v.what}`;
      return "accepted";
    } catch (err) {
      return err instanceof E.E2EEError ? "refused" : `${err.name}: ${err.message}`;
    }
  });
  return out;
}
